package cni

import (
	"errors"

	"github.com/containernetworking/cni/pkg/types"
)

// codeError attaches a CNI error code to an error chain, so the code chosen
// where the problem is found survives the context added on the way up.
type codeError struct {
	code uint
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

func withCode(code uint, err error) error { return &codeError{code: code, err: err} }

// toCNIError turns err into the *types.Error skel prints: the innermost code
// in the chain (a codeError or a *types.Error from a CNI helper), or
// ErrInternal, with the whole chain as the message.
func toCNIError(err error) error {
	if err == nil {
		return nil
	}
	code := types.ErrInternal
	var ce *codeError
	var te *types.Error
	switch {
	case errors.As(err, &ce):
		code = ce.code
	case errors.As(err, &te):
		code = te.Code
	}
	return &types.Error{Code: code, Msg: err.Error()}
}
