// Package runner implements `tulle run`: Docker-like containers for hosts
// without an orchestrator. A container is an OCI bundle (config.json built
// from github.com/opencontainers/runtime-spec types by the pure BuildSpec)
// executed by runc, limited by cgroups (memory, cpu, pids) and capabilities,
// with one of Docker's four network modes:
//
//	none            a fresh network namespace with only lo
//	host            no network namespace: the node's interfaces
//	bridge          a namespace attached by the tulle CNI plugin (libcni)
//	container:NAME  the network namespace of another running container
//
// Each container has a directory <state dir>/<name> holding state.json
// (written atomically), the bundle's config.json, the log, and the bind
// mount of its network namespace. A detached monitor process (a re-exec of
// tulle, like conmon) owns a running container: it is the container's
// subreaper, waits for it, records the exit code and OOM kills, and deletes
// the runc container so its cgroups go with it.
//
// Only cmd/tulle imports this package. It imports internal/cni for the
// port-mapping and veth-name conventions it shares with the CNI plugin;
// nothing in internal/ may import runner.
package runner
