// Package batcher accumulates usage events for a short window and sends them to Unimeter as one
// Ingest call: the "buffered flush" pattern of the Go reference page, shared by the metering
// middleware (saas-api, free-tier-alerts) and the high-throughput queue consumer.
//
// Every event gets an EventId (a UUIDv7, unless it already has one) before its first send and keeps
// it across retries, so a batch resent after a lost acknowledgement is reported as duplicates and
// never counted twice. Unavailable and ResourceExhausted are retried with exponential backoff,
// honouring the server's RetryInfo. A batch rejected with InvalidArgument is stored not at all: the
// events its field violations name are set aside (Config.OnReject) and the rest is sent again.
package batcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

// ErrClosed is returned by Add and Submit after Close.
var ErrClosed = errors.New("batcher: closed")

// ErrRejected is passed to the ack of an event the server rejected as invalid.
var ErrRejected = errors.New("batcher: event rejected as invalid")

// Config tunes a Batcher; zero fields take the defaults.
type Config struct {
	MaxBatch int           // events per Ingest call; default 1000, at most 10,000
	Window   time.Duration // how long the first event of a batch waits for company; default 20 ms
	Buffer   int           // queued events before Add blocks (backpressure); default 4*MaxBatch
	Backoff  unimeter.Backoff
	// OnFlush, if set, is called after every Ingest attempt sequence with its outcome.
	OnFlush func(Flush)
	// OnReject, if set, receives each event that the server rejected as invalid, with the reason.
	OnReject func(ev *pb.Event, field, description string)
	// Log receives the errors the batcher prints (field violations of rejected batches); default
	// os.Stderr.
	Log io.Writer
}

// Flush describes one batch sent.
type Flush struct {
	Events   int                // events in the batch as first sent
	Rejected int                // events set aside as invalid
	Response *pb.IngestResponse // the final response (nil on error)
	Err      error              // the final error
	Took     time.Duration
}

type item struct {
	ev  *pb.Event
	ack func(error)
}

// Batcher is safe for concurrent use. Create it with New and stop it with Close.
type Batcher struct {
	ingest  pb.IngestServiceClient
	cfg     Config
	in      chan item
	mu      sync.RWMutex // guards closed against the send on in
	closed  bool
	stopped chan struct{}
}

// New starts a Batcher sending to ingest.
func New(ingest pb.IngestServiceClient, cfg Config) *Batcher {
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 1000
	}
	if cfg.MaxBatch > 10_000 {
		cfg.MaxBatch = 10_000
	}
	if cfg.Window <= 0 {
		cfg.Window = 20 * time.Millisecond
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = 4 * cfg.MaxBatch
	}
	if cfg.Backoff == (unimeter.Backoff{}) {
		cfg.Backoff = unimeter.DefaultBackoff
	}
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	b := &Batcher{ingest: ingest, cfg: cfg, in: make(chan item, cfg.Buffer), stopped: make(chan struct{})}
	go b.run()
	return b
}

// Add queues ev. It returns once the event is queued (blocking while the buffer is full, until ctx
// is done); ack, if not nil, is called from the batcher's goroutine with the outcome of its batch:
// nil once stored (or recognised as a duplicate of a stored event), ErrRejected or the send error.
func (b *Batcher) Add(ctx context.Context, ev *pb.Event, ack func(error)) error {
	if ev.GetEventId() == "" {
		ev.EventId = unimeter.NewEventID() // before the first try, so retries dedupe
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	select {
	case b.in <- item{ev: ev, ack: ack}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Submit queues ev and waits until its batch has been acknowledged.
func (b *Batcher) Submit(ctx context.Context, ev *pb.Event) error {
	done := make(chan error, 1)
	if err := b.Add(ctx, ev, func(err error) { done <- err }); err != nil {
		return err
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close sends what is queued and stops the batcher; it waits for the last flush until ctx is done.
func (b *Batcher) Close(ctx context.Context) error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.in)
	}
	b.mu.Unlock()
	select {
	case <-b.stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Batcher) run() {
	defer close(b.stopped)
	batch := make([]item, 0, b.cfg.MaxBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	flush := func() {
		timer.Stop()
		if len(batch) > 0 {
			b.send(batch)
			batch = make([]item, 0, b.cfg.MaxBatch)
		}
	}
	for {
		select {
		case it, ok := <-b.in:
			if !ok {
				flush()
				return
			}
			batch = append(batch, it)
			if len(batch) == 1 {
				timer.Reset(b.cfg.Window)
			}
			if len(batch) >= b.cfg.MaxBatch {
				flush()
			}
		case <-timer.C:
			flush()
		}
	}
}

// send delivers one batch, retrying transient failures and setting invalid events aside.
func (b *Batcher) send(batch []item) {
	start := time.Now()
	f := Flush{Events: len(batch)}
	// A batch is not tied to any caller's context: it gets its own bound.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for len(batch) > 0 {
		events := make([]*pb.Event, len(batch))
		for i, it := range batch {
			events[i] = it.ev
		}
		var resp *pb.IngestResponse
		err := unimeter.Retry(ctx, b.cfg.Backoff, func(ctx context.Context) error {
			var err error
			resp, err = b.ingest.Ingest(ctx, &pb.IngestRequest{Events: events})
			return err
		})
		bad := unimeter.BadEvents(err)
		if status.Code(err) != codes.InvalidArgument || len(bad) == 0 || bad[len(bad)-1] >= len(batch) {
			f.Response, f.Err = resp, err
			for _, it := range batch {
				if it.ack != nil {
					it.ack(err)
				}
			}
			break
		}
		// Nothing of the batch was stored: report the bad events, keep the good ones, send again.
		unimeter.PrintError(b.cfg.Log, fmt.Sprintf("ingest (%d events, %d set aside)", len(batch), len(bad)), err)
		isBad := map[int]bool{}
		for _, v := range unimeter.FieldViolations(err) {
			if i, ok := unimeter.EventIndex(v.GetField()); ok {
				isBad[i] = true
				if b.cfg.OnReject != nil {
					b.cfg.OnReject(batch[i].ev, v.GetField(), v.GetDescription())
				}
			}
		}
		kept := batch[:0:0]
		for i, it := range batch {
			if !isBad[i] {
				kept = append(kept, it)
			} else if it.ack != nil {
				it.ack(ErrRejected)
			}
		}
		f.Rejected += len(bad)
		batch = kept
	}
	f.Took = time.Since(start)
	if b.cfg.OnFlush != nil {
		b.cfg.OnFlush(f)
	}
}
