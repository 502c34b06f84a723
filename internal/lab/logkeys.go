package lab

// Attribute keys the lab adds to those of package logkey (which it uses for
// node, duration, err and lab).
const (
	keyPID        = "pid"
	keySignal     = "signal"
	keyContainer  = "container"
	keyIP         = "ip"
	keyNodes      = "nodes"
	keyContainers = "containers"
	keyBackend    = "backend"
	keyNamespaces = "namespaces"
	keyProcesses  = "processes"
	keyErrors     = "errors"
	keyEndpoint   = "endpoint"
	keySwitch     = "switch"
)
