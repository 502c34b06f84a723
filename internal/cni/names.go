package cni

import (
	"crypto/sha256"
	"encoding/hex"
)

// HostVethName is the host-side veth name of an attachment: "tl" and 12 hex
// digits of sha256(containerID "/" ifname), 14 bytes. It is derived rather
// than random so that DEL and GC find the veth without any state, even after
// the container's namespace is gone. '/' cannot occur in an ifname, so the
// hashed string is unambiguous.
//
// The prefix is "tl" without a dash on purpose: links named "tl-*" belong to
// the agent's dataplane, which prunes the ones it does not expect.
func HostVethName(containerID, ifname string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifname))
	return "tl" + hex.EncodeToString(sum[:6])
}
