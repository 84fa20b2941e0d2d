// goclient drives the transport test Echo service with grpc-go (raw-bytes codec, so no
// generated Go code is needed) and prints one JSON object with what it observed.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// echoRequest hand-encodes the few EchoRequest fields the scenarios use.
func echoRequest(text string, repeat, size, failCode int, failMessage string, block bool) []byte {
	var b []byte
	varint := func(v uint64) {
		for v >= 0x80 {
			b = append(b, byte(v)|0x80)
			v >>= 7
		}
		b = append(b, byte(v))
	}
	str := func(field int, s string) {
		if s != "" {
			varint(uint64(field<<3 | 2))
			varint(uint64(len(s)))
			b = append(b, s...)
		}
	}
	num := func(field, v int) {
		if v != 0 {
			varint(uint64(field << 3))
			varint(uint64(v))
		}
	}
	str(1, text)
	num(2, repeat)
	num(3, size)
	num(4, failCode)
	str(5, failMessage)
	if block {
		num(8, 1)
	}
	return b
}

type result struct {
	Unary         string `json:"unary"`
	Concurrent    int64  `json:"concurrent_ok"`
	StreamBytes   int    `json:"stream_bytes"`
	StreamCount   int    `json:"stream_count"`
	Bidi          []string `json:"bidi"`
	ErrCode       int    `json:"err_code"`
	ErrMessage    string `json:"err_message"`
	UnknownCode   int    `json:"unknown_code"`
	DeadlineCode  int    `json:"deadline_code"`
}

func main() {
	target := flag.String("target", "127.0.0.1:2379", "server address")
	flag.Parse()
	conn, err := grpc.Dial(*target, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	defer conn.Close()
	fail := func(what string, err error) {
		fmt.Fprintln(os.Stderr, what+":", err)
		os.Exit(1)
	}
	var r result
	ctx := metadata.AppendToOutgoingContext(context.Background(), "token", "go-token")

	in := echoRequest("hello from go", 0, 0, 0, "", false)
	var out []byte
	if err := conn.Invoke(ctx, "/uptest.Echo/Unary", &in, &out); err != nil {
		fail("unary", err)
	}
	r.Unary = base64.StdEncoding.EncodeToString(out)

	var wg sync.WaitGroup
	for w := 0; w < 50; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				req := echoRequest(fmt.Sprintf("w%d-%d", w, i), 0, i*100, 0, "", false)
				var rep []byte
				if err := conn.Invoke(ctx, "/uptest.Echo/Unary", &req, &rep); err == nil {
					atomic.AddInt64(&r.Concurrent, 1)
				}
			}
		}(w)
	}
	wg.Wait()

	desc := &grpc.StreamDesc{ServerStreams: true}
	stream, err := conn.NewStream(ctx, desc, "/uptest.Echo/ServerStream")
	if err != nil {
		fail("stream", err)
	}
	req := echoRequest("s", 8, 1<<20, 0, "", false)
	if err := stream.SendMsg(&req); err != nil {
		fail("stream send", err)
	}
	stream.CloseSend()
	for {
		var msg []byte
		if err := stream.RecvMsg(&msg); err == io.EOF {
			break
		} else if err != nil {
			fail("stream recv", err)
		}
		r.StreamCount++
		r.StreamBytes += len(msg)
	}

	bidi, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/uptest.Echo/Bidi")
	if err != nil {
		fail("bidi", err)
	}
	for i := 0; i < 3; i++ {
		m := echoRequest(fmt.Sprintf("b%d", i), 0, 0, 0, "", false)
		if err := bidi.SendMsg(&m); err != nil {
			fail("bidi send", err)
		}
		var rep []byte
		if err := bidi.RecvMsg(&rep); err != nil {
			fail("bidi recv", err)
		}
		r.Bidi = append(r.Bidi, base64.StdEncoding.EncodeToString(rep))
	}
	bidi.CloseSend()
	for {
		var rep []byte
		if err := bidi.RecvMsg(&rep); err == io.EOF {
			break
		} else if err != nil {
			fail("bidi tail", err)
		}
		r.Bidi = append(r.Bidi, base64.StdEncoding.EncodeToString(rep))
	}

	bad := echoRequest("", 0, 0, 5, "no such key: 100% ü", false)
	err = conn.Invoke(ctx, "/uptest.Echo/Unary", &bad, &out)
	r.ErrCode = int(status.Code(err))
	r.ErrMessage = status.Convert(err).Message()

	err = conn.Invoke(ctx, "/uptest.Nope/Call", &in, &out)
	r.UnknownCode = int(status.Code(err))

	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	blocking := echoRequest("", 0, 0, 0, "", true)
	err = conn.Invoke(dctx, "/uptest.Echo/Unary", &blocking, &out)
	cancel()
	r.DeadlineCode = int(status.Code(err))

	enc, _ := json.Marshal(r)
	fmt.Println(string(enc))
}
