//go:build !linux

package udptun

import (
	"errors"
	"fmt"
)

func open(cfg Config) (*Engine, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("udptun: open: %w (TUN data path is Linux only)", errors.ErrUnsupported)
}
