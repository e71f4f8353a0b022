package batcher

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

// fakeIngest records the batches it receives; failFirst makes the first call fail with that code.
type fakeIngest struct {
	mu        sync.Mutex
	batches   [][]*pb.Event
	at        []time.Time
	failFirst codes.Code
}

func (f *fakeIngest) Ingest(_ context.Context, in *pb.IngestRequest, _ ...grpc.CallOption) (*pb.IngestResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches = append(f.batches, in.GetEvents())
	f.at = append(f.at, time.Now())
	if f.failFirst != codes.OK && len(f.batches) == 1 {
		return nil, status.Error(f.failFirst, "injected")
	}
	return &pb.IngestResponse{NStored: uint32(len(in.GetEvents()))}, nil
}

func (f *fakeIngest) sizes() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]int, len(f.batches))
	for i, b := range f.batches {
		out[i] = len(b)
	}
	return out
}

var fast = unimeter.Backoff{Initial: time.Millisecond, Max: time.Millisecond, Multiplier: 2, MaxAttempts: 3}

func TestLoneEventIsSentAfterTheWindow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f := &fakeIngest{}
	b := New(f, Config{Window: 30 * time.Millisecond, Backoff: fast})
	defer b.Close(ctx)
	start := time.Now()
	ev := &pb.Event{AccountId: 1, MetricCode: "m", Value: 1}
	if err := b.Submit(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 30*time.Millisecond || took > time.Second {
		t.Fatalf("acknowledged after %v, want just after the 30ms window", took)
	}
	if ev.GetEventId() == "" {
		t.Fatal("the event got no id before its first send")
	}
}

func TestFullBatchesGoAtOnceAndCloseSendsTheRest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f := &fakeIngest{}
	b := New(f, Config{MaxBatch: 100, Window: time.Hour, Backoff: fast})
	for i := range 250 {
		if err := b.Add(ctx, &pb.Event{AccountId: 1, MetricCode: "m", Value: uint64(i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.sizes(); len(got) != 3 || got[0] != 100 || got[1] != 100 || got[2] != 50 {
		t.Fatalf("batch sizes %v, want [100 100 50]", got)
	}
	if err := b.Add(ctx, &pb.Event{}, nil); err != ErrClosed {
		t.Fatalf("Add after Close = %v, want ErrClosed", err)
	}
}

func TestRetryResendsTheSameEventIDs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f := &fakeIngest{failFirst: codes.Unavailable}
	b := New(f, Config{Window: time.Millisecond, Backoff: fast})
	defer b.Close(ctx)
	if err := b.Submit(ctx, &pb.Event{AccountId: 1, MetricCode: "m", Value: 1}); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != 2 || f.batches[0][0].GetEventId() != f.batches[1][0].GetEventId() {
		t.Fatalf("%d sends; want 2 with the same event id", len(f.batches))
	}
}

func TestFinalErrorsReachTheAcks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f := &fakeIngest{failFirst: codes.PermissionDenied}
	b := New(f, Config{Window: time.Millisecond, Backoff: fast})
	defer b.Close(ctx)
	err := b.Submit(ctx, &pb.Event{AccountId: 1, MetricCode: "m", Value: 1})
	if status.Code(err) != codes.PermissionDenied || len(f.batches) != 1 {
		t.Fatalf("err %v after %d sends; want PermissionDenied after 1", err, len(f.batches))
	}
}
