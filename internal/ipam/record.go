package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Attachment names the holder of an address: a container's interface, as
// the runtime passes it in CNI_CONTAINERID and CNI_IFNAME.
type Attachment struct {
	ContainerID string
	IfName      string
}

func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

// Record is one allocation as stored on disk.
type Record struct {
	Addr netip.Addr
	Attachment
}

// formatRecord renders the content of an address file.
func formatRecord(a Attachment) []byte {
	return []byte(a.ContainerID + "\n" + a.IfName + "\n")
}

// parseRecord reads the content of an address file. It also accepts the
// "\r\n" separator host-local writes, so a data directory migrated from it
// still counts as taken.
func parseRecord(b []byte) (Attachment, error) {
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	s = strings.TrimSuffix(s, "\n")
	id, ifname, ok := strings.Cut(s, "\n")
	switch {
	case !ok:
		return Attachment{}, errors.New("want two lines: container ID and ifname")
	case id == "" || strings.ContainsAny(id, "\n\r"):
		return Attachment{}, fmt.Errorf("invalid container ID %q", id)
	case ifname == "" || strings.ContainsAny(ifname, "\n\r"):
		return Attachment{}, fmt.Errorf("invalid ifname %q", ifname)
	}
	return Attachment{ContainerID: id, IfName: ifname}, nil
}

// validate rejects attachments that could not be stored and read back.
func (a Attachment) validate() error {
	if a.ContainerID == "" || strings.ContainsAny(a.ContainerID, "\n\r") {
		return fmt.Errorf("ipam: invalid container ID %q", a.ContainerID)
	}
	if a.IfName == "" || strings.ContainsAny(a.IfName, "\n\r") {
		return fmt.Errorf("ipam: invalid ifname %q", a.IfName)
	}
	return nil
}
