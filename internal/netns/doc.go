// Package netns creates, enters and deletes named network namespaces, and
// starts processes inside them.
//
// A named namespace is a bind mount of a thread's /proc/self/task/<tid>/ns/net
// on /run/netns/<name>, the same convention as 'ip netns', so the iproute2
// tools see tulle's namespaces and the other way round.
//
// Switching a thread's namespace is thread-local state the Go scheduler does
// not know about. Every switch here happens on a dedicated goroutine that
// locks its OS thread; if the thread cannot be moved back, it stays locked so
// the runtime terminates it instead of reusing it for unrelated goroutines
// (see runtime.LockOSThread, and containernetworking/plugins pkg/ns).
//
// The lab, the dataplane and the CNI plugin tests use this package; it
// imports nothing of tulle's. Test helpers live in netns/nstest.
package netns
