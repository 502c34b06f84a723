//go:build !linux

package dataplane

import (
	"context"
	"errors"
	"net/netip"

	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/plan"
)

// Dataplane is only implemented on Linux.
type Dataplane struct{}

// New is only supported on Linux.
func New(o Options) (*Dataplane, error) { return nil, errors.ErrUnsupported }

// Apply is only supported on Linux.
func (d *Dataplane) Apply(ctx context.Context, want plan.State) (Changes, error) {
	return Changes{}, errors.ErrUnsupported
}

// Close is only supported on Linux.
func (d *Dataplane) Close() error { return errors.ErrUnsupported }

// Underlay is only supported on Linux.
func Underlay(h netns.NsHandle, iface string, publicIP netip.Addr) (UnderlayInfo, error) {
	return UnderlayInfo{}, errors.ErrUnsupported
}

func nftText(m *plan.Masquerade) string { return masqText(m) }
