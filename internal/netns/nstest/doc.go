// Package nstest gives kernel tests throw-away network namespaces: a root
// gate (RequireRoot), a fresh named namespace per test (New) that is removed
// in t.Cleanup even when the test fails, and a veth pair between two such
// namespaces (Veth). Only _test.go files may import it.
package nstest
