// Package freetier is the free-tier-alerts example: a metric with two one-shot thresholds, a live
// AlertSubscribe stream, and enforcement from a local cache (the overCap map of the Go reference
// page) instead of a query per request.
//
// The consumer persists its resume token, the last alert offset seen per partition, to a file. The
// stream's first message is a heartbeat with the offsets it starts from, idle heartbeats follow at
// least every 5 s, and each alert carries its partition and offset; all of them advance the token.
// After a restart (of the consumer or of the server) the consumer subscribes with those offsets as
// since_offsets and receives exactly the alerts it has not seen, including those fired while it
// was down. Delivery is at-least-once across reconnects, so alerts at or below the saved offset of
// their partition are skipped.
//
// The over-cap cache is saved in the same file as the offsets, in one atomic write: the two always
// agree, so a restarted consumer still blocks the accounts whose hard_cap alert it consumed before.
package freetier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

// Metric and threshold codes of this example.
const (
	MetricCode       = "api_calls"
	FreeTierExceeded = "free_tier_exceeded"
	HardCap          = "hard_cap"
)

// alertsPerMessage is the max_alerts_per_message the subscription asks for (the server allows up
// to 1000).
const alertsPerMessage = 256

// Metric counts API calls per 30-day period, with a one-shot alert at freeTier calls (send an
// upgrade email) and one at hardCap calls (stop serving the account until the period ends). The
// program uses 10,000 and 100,000.
func Metric(freeTier, hardCap uint64) *pb.Metric {
	return &pb.Metric{
		Code:    MetricCode,
		AggType: pb.AggType_AGG_TYPE_COUNT,
		Thresholds: []*pb.AlertThreshold{
			{Code: FreeTierExceeded, Value: freeTier},
			{Code: HardCap, Value: hardCap},
		},
	}
}

// State is what the consumer persists.
type State struct {
	// Offsets maps partition to the last alert offset seen: the since_offsets of the next run.
	Offsets map[uint32]uint64 `json:"offsets"`
	// OverCap maps each account over its hard cap to the end of that period (Unix nanoseconds).
	OverCap map[uint64]int64 `json:"over_cap"`
}

// LoadState reads the state file; a missing file is an empty state (first run).
func LoadState(path string) (State, error) {
	s := State{Offsets: map[uint32]uint64{}, OverCap: map[uint64]int64{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("%s: %w", path, err)
	}
	if s.Offsets == nil {
		s.Offsets = map[uint32]uint64{}
	}
	if s.OverCap == nil {
		s.OverCap = map[uint64]int64{}
	}
	return s, nil
}

// Save writes the state atomically: a temporary file, fsynced, renamed over the old one.
func (s State) Save(path string) error {
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Enforcer consumes the alert stream into the over-cap cache and answers OverCap from it.
type Enforcer struct {
	client    *unimeter.Client
	path      string
	periodLen time.Duration
	// OnAlert, if set, is called for every new alert after the cache is updated (send the upgrade
	// email on free_tier_exceeded here). It runs on the consumer goroutine: keep it quick.
	OnAlert func(*pb.Alert)
	// Backoff paces resubscribing after the stream breaks; default 100 ms doubling up to 5 s.
	Backoff unimeter.Backoff
	// Log, if set, receives a line each time the stream breaks and is resubscribed.
	Log   *log.Logger
	now   func() time.Time
	ready chan struct{}
	once  sync.Once

	mu    sync.RWMutex
	state State
}

// NewEnforcer loads the state file at path. metric is the metric as stored (its period length
// tells when a hard cap expires; this example's metric has FIXED periods).
func NewEnforcer(c *unimeter.Client, metric *pb.Metric, path string) (*Enforcer, error) {
	if metric.GetPeriodType() != pb.PeriodType_PERIOD_TYPE_FIXED {
		return nil, fmt.Errorf("metric %q: this example expects FIXED periods", metric.GetCode())
	}
	st, err := LoadState(path)
	if err != nil {
		return nil, err
	}
	return &Enforcer{
		client: c, path: path, state: st, now: time.Now, ready: make(chan struct{}),
		periodLen: time.Duration(metric.GetFixedPeriodSeconds()) * time.Second,
	}, nil
}

// Ready is closed once the first subscription is live (its first heartbeat arrived): alerts from
// then on reach the consumer.
func (e *Enforcer) Ready() <-chan struct{} { return e.ready }

// OverCap reports whether the account's hard_cap alert of the current period has been consumed.
// It never does network IO, so call it on every request.
func (e *Enforcer) OverCap(_ context.Context, account uint64) (bool, error) {
	e.mu.RLock()
	end, ok := e.state.OverCap[account]
	e.mu.RUnlock()
	return ok && e.now().UnixNano() < end, nil
}

// Offsets returns a copy of the resume token.
func (e *Enforcer) Offsets() map[uint32]uint64 {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return maps.Clone(e.state.Offsets)
}

// Run consumes alerts until ctx is done, resubscribing from the saved offsets with backoff when the
// stream breaks (Unavailable: the server restarts or is unreachable). It returns ctx's error, or
// the first error that retrying cannot fix.
func (e *Enforcer) Run(ctx context.Context) error {
	backoff := e.Backoff
	if backoff == (unimeter.Backoff{}) {
		backoff = unimeter.Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second, Multiplier: 2}
	}
	backoff.MaxAttempts = 0 // a subscriber never gives up on Unavailable
	attempt := 0
	for {
		progressed, err := e.subscribeOnce(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !unimeter.Retryable(err) {
			return err
		}
		if progressed {
			attempt = 0
		}
		attempt++
		delay := backoff.Delay(attempt, err)
		if e.Log != nil {
			e.Log.Printf("alert stream: %v; resubscribing in %v", err, delay.Round(time.Millisecond))
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// subscribeOnce runs one subscription until it fails; progressed tells whether it received anything.
func (e *Enforcer) subscribeOnce(ctx context.Context) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := e.client.Alerts.AlertSubscribe(ctx, &pb.AlertSubscribeRequest{
		MetricCodes:  []string{MetricCode},
		SinceOffsets: e.Offsets(), // empty on the first run: every partition starts at its live tail
		// Alerts that are ready together (a burst from one ingest call, a backlog after a restart)
		// come in one message and cost one save of the state file, not one each.
		MaxAlertsPerMessage: alertsPerMessage,
	})
	if err != nil {
		return false, err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return progressed, err
		}
		progressed = true
		switch kind := msg.GetKind().(type) {
		case *pb.AlertSubscribeResponse_Heartbeat:
			if err := e.heartbeat(kind.Heartbeat.GetOffsets()); err != nil {
				return progressed, status.Errorf(codes.Internal, "save state: %v", err) // not retryable
			}
			e.once.Do(func() { close(e.ready) })
		case *pb.AlertSubscribeResponse_Batch:
			if err := e.alerts(kind.Batch.GetAlerts()); err != nil {
				return progressed, status.Errorf(codes.Internal, "save state: %v", err)
			}
		case *pb.AlertSubscribeResponse_Alert: // a server that predates batches sends them one by one
			if err := e.alerts([]*pb.Alert{kind.Alert}); err != nil {
				return progressed, status.Errorf(codes.Internal, "save state: %v", err)
			}
		}
	}
}

// heartbeat advances the token to the heartbeat's offsets and saves it if anything moved. A
// partition is recorded even at offset 0: after a restart, "since 0" delivers its first alert, where
// leaving it out would start it at the live tail and lose alerts fired in between.
func (e *Enforcer) heartbeat(offsets map[uint32]uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	moved := false
	for p, off := range offsets {
		if old, ok := e.state.Offsets[p]; !ok || off > old {
			e.state.Offsets[p] = off
			moved = true
		}
	}
	if !moved {
		return nil
	}
	return e.state.Save(e.path)
}

// alerts applies a message's new alerts, each to the cache first, then to OnAlert; only then are
// the token and cache saved together, once for the message. A crash in between redelivers them
// (at-least-once); an alert at or below its partition's offset was handled before and is skipped.
func (e *Enforcer) alerts(batch []*pb.Alert) error {
	applied := false
	for _, a := range batch {
		e.mu.Lock()
		if a.GetOffset() <= e.state.Offsets[a.GetPartition()] {
			e.mu.Unlock()
			continue
		}
		if a.GetThresholdCode() == HardCap {
			end := a.GetPeriodStartUnixNano() + e.periodLen.Nanoseconds()
			if end > e.state.OverCap[a.GetAccountId()] {
				e.state.OverCap[a.GetAccountId()] = end
			}
		}
		e.mu.Unlock()
		if e.OnAlert != nil {
			e.OnAlert(a)
		}
		e.mu.Lock()
		e.state.Offsets[a.GetPartition()] = a.GetOffset()
		e.mu.Unlock()
		applied = true
	}
	if !applied {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now().UnixNano()
	for account, end := range e.state.OverCap {
		if end <= now {
			delete(e.state.OverCap, account) // its period is over
		}
	}
	return e.state.Save(e.path)
}
