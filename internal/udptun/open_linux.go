package udptun

import "errors"

func open(cfg Config) (*Engine, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	// The socket first: binding fails more often (address, port) and is
	// free to undo; a fresh TUN device is undone by dropping persistence.
	conn, err := listenUDP(cfg.Listen, txOutBatch, txIovs)
	if err != nil {
		return nil, err
	}
	dev, created, err := openTUN(cfg.TUNName)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if err := setAcceptLocal(cfg.TUNName); err != nil {
		if created {
			dev.unpersist()
		}
		return nil, errors.Join(err, dev.Close(), conn.Close())
	}
	e := newEngine(cfg, dev, conn)
	e.log.Info("udp data path open", "created", created, "listen", cfg.Listen.String(),
		"udp_gso", conn.MaxSegments() > 1, "udp_gro", conn.gro)
	return &Engine{e: e}, nil
}
