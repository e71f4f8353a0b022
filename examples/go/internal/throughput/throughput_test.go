package throughput

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/batcher"
	"github.com/unimeter/unimeter/examples/go/internal/testserver"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

var addr string

func TestMain(m *testing.M) { testserver.Exit(m, &addr) }

// t0 starts a 30-day period of a FIXED metric (2024-09-14 UTC).
var (
	t0         = time.Unix(19_980*86_400, 0).UTC()
	thisPeriod = unimeter.Range(t0, t0.Add(30*24*time.Hour))
)

type flushLog struct {
	mu      sync.Mutex
	flushes []batcher.Flush
}

func (l *flushLog) add(f batcher.Flush) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushes = append(l.flushes, f)
}

func (l *flushLog) all() []batcher.Flush {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]batcher.Flush(nil), l.flushes...)
}

func dial(ctx context.Context, t *testing.T, opts ...grpc.DialOption) *unimeter.Client {
	t.Helper()
	c, err := unimeter.Dial(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := unimeter.EnsureMetric(ctx, c, Metric()); err != nil {
		t.Fatal(err)
	}
	return c
}

func sum(ctx context.Context, t *testing.T, c *unimeter.Client, account uint64) int64 {
	t.Helper()
	r, err := c.Query.Query(ctx, &pb.QueryRequest{AccountId: account, MetricCode: MetricCode, Period: thisPeriod})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetValue().GetSum()
}

// queue produces n messages per account, message i carrying i bytes at t0 + i ms.
func queue(prefix string, accounts []uint64, n int, acked *atomic.Int64, failed *atomic.Int64) <-chan Message {
	ch := make(chan Message, 256)
	go func() {
		defer close(ch)
		for i := 1; i <= n; i++ {
			for _, a := range accounts {
				ch <- Message{
					ID: fmt.Sprintf("%s-%d-%d", prefix, a, i), Account: a, Bytes: uint64(i),
					At: t0.Add(time.Duration(i) * time.Millisecond),
					Ack: func(err error) {
						if err != nil {
							failed.Add(1)
						} else {
							acked.Add(1)
						}
					},
				}
			}
		}
	}()
	return ch
}

func TestFlusherSendsBatchesOfAtMost1000AndCountsExactly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dial(ctx, t)
	var log flushLog
	f := batcher.New(c.Ingest, batcher.Config{MaxBatch: 1000, Window: 20 * time.Millisecond, OnFlush: log.add})
	accounts := []uint64{501, 502, 503, 504, 505}
	const perAccount = 1200
	var acked, failed atomic.Int64
	if err := Consume(ctx, queue("load", accounts, perAccount, &acked, &failed), f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if acked.Load() != 6000 || failed.Load() != 0 {
		t.Fatalf("acked %d, failed %d; want 6000, 0", acked.Load(), failed.Load())
	}
	total := 0
	for _, fl := range log.all() {
		if fl.Err != nil || fl.Events > 1000 || fl.Response.GetNStored() != uint32(fl.Events) {
			t.Fatalf("flush %+v: want at most 1000 events, all stored", fl)
		}
		total += fl.Events
	}
	if n := len(log.all()); total != 6000 || n < 6 {
		t.Fatalf("%d events in %d batches, want 6000 in at least 6", total, n)
	}
	const want = perAccount * (perAccount + 1) / 2 // 1 + 2 + ... + 1200 bytes
	for _, a := range accounts {
		if got := sum(ctx, t, c, a); got != want {
			t.Errorf("account %d: %d bytes, want %d", a, got, want)
		}
	}
}

// loseFirstIngestAck lets the first Ingest call reach the server, then reports it as Unavailable,
// as if the connection dropped before the response arrived.
func loseFirstIngestAck(lost *atomic.Bool) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err == nil && method == pb.IngestService_Ingest_FullMethodName && lost.CompareAndSwap(false, true) {
			return status.Error(codes.Unavailable, "injected: connection lost before the response")
		}
		return err
	}
}

func TestRetryAfterLostAckNeverDoubleCounts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var lost atomic.Bool
	c := dial(ctx, t, grpc.WithUnaryInterceptor(loseFirstIngestAck(&lost)))
	var log flushLog
	f := batcher.New(c.Ingest, batcher.Config{MaxBatch: 1000, Window: 20 * time.Millisecond, OnFlush: log.add})
	var acked, failed atomic.Int64
	if err := Consume(ctx, queue("retry", []uint64{601}, 500, &acked, &failed), f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	flushes := log.all()
	if !lost.Load() || len(flushes) == 0 {
		t.Fatalf("no acknowledgement was lost (%d flushes)", len(flushes))
	}
	// The first batch was stored by the lost call; its retry found every event already there.
	first := flushes[0]
	if first.Err != nil || first.Response.GetNDuplicates() != uint32(first.Events) || first.Response.GetNStored() != 0 {
		t.Fatalf("retried batch: %d events, response %v, err %v; want all duplicates", first.Events, first.Response, first.Err)
	}
	if acked.Load() != 500 || failed.Load() != 0 {
		t.Fatalf("acked %d, failed %d; want 500, 0", acked.Load(), failed.Load())
	}
	if got := sum(ctx, t, c, 601); got != 500*501/2 {
		t.Fatalf("sum = %d, want %d", got, 500*501/2)
	}
}

func TestRedeliveredBatchIsReportedAsDuplicates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dial(ctx, t)
	batch := make([]*pb.Event, 1000)
	for i := range batch {
		batch[i] = Message{ID: fmt.Sprintf("redeliver-%d", i), Account: 701, Bytes: 10, At: t0.Add(time.Second)}.Event()
	}
	first, err := unimeter.Ingest(ctx, c, batch)
	if err != nil {
		t.Fatal(err)
	}
	again, err := unimeter.Ingest(ctx, c, batch)
	if err != nil {
		t.Fatal(err)
	}
	if first.GetNStored() != 1000 || again.GetNStored() != 0 || again.GetNDuplicates() != 1000 {
		t.Fatalf("first stored %d; again stored %d, duplicates %d; want 1000; 0, 1000",
			first.GetNStored(), again.GetNStored(), again.GetNDuplicates())
	}
	for i := range batch {
		if again.GetOffsets()[i] != first.GetOffsets()[i] {
			t.Fatalf("offset %d: duplicate at %d, original at %d", i, again.GetOffsets()[i], first.GetOffsets()[i])
		}
	}
	if got := sum(ctx, t, c, 701); got != 10_000 {
		t.Fatalf("sum = %d, want 10000", got)
	}
}

func TestInvalidEventsAreSetAsideAndTheRestIsStored(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dial(ctx, t)
	var printed bytes.Buffer
	var mu sync.Mutex
	var rejected []string
	f := batcher.New(c.Ingest, batcher.Config{
		Window: 20 * time.Millisecond,
		Log:    &printed,
		OnReject: func(ev *pb.Event, field, _ string) {
			mu.Lock()
			defer mu.Unlock()
			rejected = append(rejected, ev.GetEventId()+" "+field)
		},
	})
	acks := make([]error, 10)
	var wg sync.WaitGroup
	for i := range 10 {
		ev := Message{ID: fmt.Sprintf("mixed-%d", i), Account: 801, Bytes: 7, At: t0.Add(time.Minute)}.Event()
		if i == 3 {
			ev.MetricCode = "bytes_transfered" // a typo: unknown metric
		}
		wg.Add(1)
		if err := f.Add(ctx, ev, func(err error) { acks[i] = err; wg.Done() }); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 1 || rejected[0] != "mixed-3 events[3].metric_code" {
		t.Fatalf("rejected = %q, want [mixed-3 events[3].metric_code]", rejected)
	}
	for i, err := range acks {
		if i == 3 && !errors.Is(err, batcher.ErrRejected) {
			t.Errorf("ack of the invalid event = %v, want ErrRejected", err)
		} else if i != 3 && err != nil {
			t.Errorf("ack %d = %v, want nil", i, err)
		}
	}
	if !strings.Contains(printed.String(), "InvalidArgument") || !strings.Contains(printed.String(), "\n  events[3].metric_code: ") {
		t.Errorf("printed:\n%s", printed.String())
	}
	if got := sum(ctx, t, c, 801); got != 63 {
		t.Fatalf("sum = %d, want 63 (9 valid events of 7 bytes)", got)
	}
}
