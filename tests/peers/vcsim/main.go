// vcsim for the assetfs test suite: VMware's simulator (govmomi 0.24.2 from Debian) with the
// REST ("vapi") endpoints, on 127.0.0.1 with a free port, until SIGTERM/SIGINT.
//
// Prints, one per line, then flushes:
//
//	URL <scheme>://127.0.0.1:<port>        (https with -tls, else http)
//	DATASTORE <datastore id for storage_backings>
//	CA <PEM file of the self-signed certificate>   (with -tls only)
//	READY
//
// With -username/-password, the REST login (POST /rest/com/vmware/cis/session) accepts only
// those credentials, like a real vCenter; the library's simulator accepts any non-empty pair.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // registers the /rest endpoints
)

func main() {
	useTLS := flag.Bool("tls", false, "serve https with a self-signed certificate")
	username := flag.String("username", "", "the only user the REST login accepts")
	password := flag.String("password", "", "that user's password")
	flag.Parse()

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0"}
	model.Service.RegisterEndpoints = true
	if *useTLS {
		// The library's built-in test certificate is RSA-1024, which OpenSSL's default
		// security level refuses ("key too weak"); use a fresh P-256 one instead.
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned()}}
	}
	server := model.Service.NewServer()
	defer server.Close()
	if *username != "" {
		inner := server.Config.Handler
		server.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && r.URL.Path == "/rest/com/vmware/cis/session" &&
				r.URL.Query().Get("~action") == "" {
				u, p, ok := r.BasicAuth()
				if !ok || u != *username || p != *password {
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
			}
			inner.ServeHTTP(w, r)
		})
	}

	fmt.Printf("URL %s://%s\n", server.URL.Scheme, server.URL.Host)
	for _, ds := range simulator.Map.All("Datastore") {
		fmt.Printf("DATASTORE %s\n", ds.Reference().Value)
	}
	if *useTLS {
		ca, err := server.CertificateFile()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("CA %s\n", ca)
	}
	fmt.Println("READY")
	_ = os.Stdout.Sync()

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
}

// selfSigned returns a P-256 certificate for 127.0.0.1 and localhost that is its own CA.
func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	template := x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "assetfs vcsim"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
