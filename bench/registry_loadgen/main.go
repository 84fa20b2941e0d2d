// registry_loadgen drives an OCI registry with many concurrent clients (Go's net/http, keep-alive) so that
// the benchmark measures the servers, not a Python client. Standard library only; built by registry_bench.py.
package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

type result struct {
	Ops     int64   `json:"ops"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	Errors  int64   `json:"errors"`
	First   string  `json:"first_error,omitempty"`
}

var (
	base    = flag.String("url", "http://127.0.0.1:5000", "registry base URL")
	mode    = flag.String("mode", "push-blobs", "push-blobs | pull-blobs | push-manifests | pull-manifests")
	workers = flag.Int("c", 32, "concurrent clients")
	total   = flag.Int("n", 64, "operations")
	size    = flag.Int("size", 4<<20, "blob size in bytes")
	repo    = flag.String("repo", "bench/app", "repository")
	seed    = flag.Int("seed", 1, "makes blob contents differ between runs")
	caFile  = flag.String("ca", "", "PEM CA bundle to trust for https URLs")
	token   = flag.String("token", "", "bearer token sent with every request")
)

// bearer adds the token to every request.
type bearer struct{ next http.RoundTripper }

func (b bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	req.Header.Set("Authorization", "Bearer "+*token)
	return b.next.RoundTrip(req)
}

func blob(i int) ([]byte, string) {
	data := make([]byte, *size)
	for off := 0; off+8 <= len(data); off += 4096 {
		binary.LittleEndian.PutUint64(data[off:], uint64(i)*2654435761+uint64(off)+uint64(*seed)<<40)
	}
	sum := sha256.Sum256(data)
	return data, "sha256:" + hex.EncodeToString(sum[:])
}

func check(resp *http.Response, err error, want int) error {
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("status %d, want %d", resp.StatusCode, want)
	}
	return nil
}

// prepared holds the blobs (push) or digests (pull) of every operation, made before the clock starts so
// that generating and hashing test data does not compete with the server for CPU during the measurement.
var prepared struct {
	data    [][]byte
	digests []string
}

func prepare() {
	prepared.data = make([][]byte, *total)
	prepared.digests = make([]string, *total)
	for i := 0; i < *total; i++ {
		data, digest := blob(i)
		if *mode == "push-blobs" {
			prepared.data[i] = data
		}
		prepared.digests[i] = digest
	}
}

func pushBlob(client *http.Client, i int) (int64, error) {
	data, digest := prepared.data[i], prepared.digests[i]
	resp, err := client.Post(*base+"/v2/"+*repo+"/blobs/uploads/", "application/octet-stream", nil)
	if err != nil {
		return 0, err
	}
	location := resp.Header.Get("Location")
	if err := check(resp, nil, 202); err != nil {
		return 0, err
	}
	target, err := resp.Request.URL.Parse(location) // absolute (Distribution) or relative (ultraplane)
	if err != nil {
		return 0, err
	}
	query := target.Query()
	query.Set("digest", digest)
	target.RawQuery = query.Encode()
	req, _ := http.NewRequest("PUT", target.String(), bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = client.Do(req)
	return int64(len(data)), check(resp, err, 201)
}

func pullBlob(client *http.Client, i int) (int64, error) {
	digest := prepared.digests[i]
	resp, err := client.Get(*base + "/v2/" + *repo + "/blobs/" + digest)
	if err != nil {
		return 0, err
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || n != int64(*size) {
		return 0, fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
	}
	return n, nil
}

var firstBlob struct {
	once   sync.Once
	digest string
}

// manifest i references the config and layer blob 0 (pushed by push-blobs) and differs by an annotation.
func manifest(i int) []byte {
	firstBlob.once.Do(func() { _, firstBlob.digest = blob(0) })
	digest := firstBlob.digest
	doc := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": *size},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": *size}},
		"annotations":   map[string]string{"bench.index": fmt.Sprint(i, "-", *seed)},
	}
	out, _ := json.Marshal(doc)
	return out
}

func pushManifest(client *http.Client, i int) (int64, error) {
	body := manifest(i)
	req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/v2/%s/manifests/t%d", *base, *repo, i), bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := client.Do(req)
	return int64(len(body)), check(resp, err, 201)
}

func pullManifest(client *http.Client, i int) (int64, error) {
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s/v2/%s/manifests/t%d", *base, *repo, i), nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	return n, nil
}

func main() {
	flag.Parse()
	op := map[string]func(*http.Client, int) (int64, error){
		"push-blobs": pushBlob, "pull-blobs": pullBlob, "push-manifests": pushManifest, "pull-manifests": pullManifest,
	}[*mode]
	if op == nil {
		fmt.Fprintln(os.Stderr, "unknown mode", *mode)
		os.Exit(2)
	}
	if *mode == "push-blobs" || *mode == "pull-blobs" {
		prepare()
	}
	var tlsConfig *tls.Config
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tlsConfig = &tls.Config{RootCAs: pool}
	}
	// Each client has its own transport holding one keep-alive connection, as separate docker/skopeo
	// processes would. A shared pool dials whenever no idle connection is free at that instant (a finished
	// response returns its connection asynchronously), which piles up TLS handshakes nobody needs.
	newClient := func() *http.Client {
		transport := &http.Transport{MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1, DisableCompression: true,
			TLSClientConfig: tlsConfig}
		var roundTripper http.RoundTripper = transport
		if *token != "" {
			roundTripper = bearer{transport}
		}
		return &http.Client{Transport: roundTripper, Timeout: 120 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	var next, ops, moved, errs int64
	var first atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := newClient()
			for {
				i := int(atomic.AddInt64(&next, 1)) - 1
				if i >= *total {
					return
				}
				n, err := op(client, i)
				if err != nil {
					atomic.AddInt64(&errs, 1)
					first.CompareAndSwap(nil, err.Error())
					continue
				}
				atomic.AddInt64(&ops, 1)
				atomic.AddInt64(&moved, n)
			}
		}()
	}
	wg.Wait()
	r := result{Ops: ops, Bytes: moved, Seconds: time.Since(start).Seconds(), Errors: errs}
	if f, ok := first.Load().(string); ok {
		r.First = f
	}
	json.NewEncoder(os.Stdout).Encode(r)
}
