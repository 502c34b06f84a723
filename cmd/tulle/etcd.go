package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// newEtcdCmd hands over to the tulle-etcd binary next to this one (or on
// PATH); see cmd/tulle-etcd for why the server is a separate binary.
func newEtcdCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "etcd --data-dir DIR [--listen URL] [--name NAME]",
		Short:              "Run an embedded single-member etcd (for one host or a lab)",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			bin, err := siblingBinary("tulle-etcd")
			if err != nil {
				return err
			}
			// Keep argv as typed ("tulle etcd ..."): ps shows what the user
			// ran, and the lab's PID checks compare command lines.
			return syscall.Exec(bin, os.Args, os.Environ())
		},
	}
}

// siblingBinary finds name next to the running tulle binary, else on PATH.
func siblingBinary(name string) (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if errors.Is(err, exec.ErrNotFound) {
		return "", fmt.Errorf("find %s: not next to tulle nor on PATH (build it with 'make build')", name)
	}
	return p, err
}
