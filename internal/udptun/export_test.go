package udptun

// SuperPackets returns how many TSO super-packets e sent and received
// whole (for the kernel tests in package udptun_test).
func SuperPackets(e *Engine) (out, in uint64) {
	return e.e.tx.superPkts.Load(), e.e.rx.superPkts.Load()
}
