package subnet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tulle-net/tulle/internal/etcdserver"
	"github.com/tulle-net/tulle/internal/subnet"
)

// pki writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA, as PEM files in dir.
type pki struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newPKI(t *testing.T, dir string) pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tulle-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p := pki{ca: filepath.Join(dir, "ca.pem")}
	writePEM(t, p.ca, "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		cert, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, cert, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", kder)
		return cert, keyFile
	}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return p
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDialTLS: the agent's --etcd-cafile/--etcd-certfile/--etcd-keyfile
// reach an etcd that requires client certificates; without the client
// certificate, or without TLS, Dial fails and says so.
func TestDialTLS(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Options{
		DataDir: filepath.Join(dir, "etcd"), ListenClient: "https://127.0.0.1:0",
		TLS: &etcdserver.TLS{CertFile: p.serverCert, KeyFile: p.serverKey, TrustedCAFile: p.ca, ClientCertAuth: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ep := srv.Endpoints()
	if !strings.HasPrefix(ep[0], "https://") {
		t.Fatalf("endpoint %s is not https", ep[0])
	}

	cli, err := subnet.Dial(ctx, subnet.DialOptions{Endpoints: ep, CAFile: p.ca, CertFile: p.clientCert, KeyFile: p.clientKey})
	if err != nil {
		t.Fatalf("dial with CA and client certificate: %v", err)
	}
	if _, err := cli.Put(ctx, "/tulle/tls/probe", "ok"); err != nil {
		t.Fatalf("put over TLS: %v", err)
	}
	cli.Close()

	short := 2 * time.Second
	for _, tc := range []struct {
		name string
		o    subnet.DialOptions
		want string
	}{
		{"no client certificate", subnet.DialOptions{Endpoints: ep, CAFile: p.ca, DialTimeout: short}, "no endpoint answered"},
		{"no TLS at all", subnet.DialOptions{Endpoints: ep, DialTimeout: short}, "no endpoint answered"},
		{"cert without key", subnet.DialOptions{Endpoints: ep, CAFile: p.ca, CertFile: p.clientCert}, "must be set together"},
		{"missing CA file", subnet.DialOptions{Endpoints: ep, CAFile: filepath.Join(dir, "nope.pem"), CertFile: p.clientCert, KeyFile: p.clientKey}, "load TLS files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, err := subnet.Dial(ctx, tc.o)
			if err == nil {
				cli.Close()
				t.Fatal("dial succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q lacks %q", err, tc.want)
			}
		})
	}
}
