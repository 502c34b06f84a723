// Package logkey holds the slog attribute keys used across tulle, so logs
// from every component can be filtered by the same names.
package logkey

// Attribute keys.
const (
	Component = "component"
	Node      = "node"
	Subnet    = "subnet"
	PublicIP  = "public_ip"
	Ifname    = "ifname"
	Route     = "route"
	Err       = "err"
	Revision  = "revision"
	Count     = "count"
	Duration  = "duration"
	Path      = "path"
	Lab       = "lab"
	Op        = "op"
	Key       = "key"
	Reason    = "reason"
	TTL       = "ttl"
)
