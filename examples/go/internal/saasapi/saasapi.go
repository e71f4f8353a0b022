// Package saasapi is the saas-api example: net/http middleware that meters one event per request
// and answers 402 Payment Required once the account has reached its cap for the current period.
//
// Metering: each request becomes one event of a COUNT metric, queued into a batcher that sends a
// batch every 20 ms (or at 1000 events). The middleware waits for its batch to be acknowledged
// before serving (a request is recorded before it is served; this adds at most one window of
// latency), and serves anyway if Unimeter cannot be reached (fail open, logged).
//
// The cap is learned from QueryRealtime: the metric declares it as its "hard_cap" threshold, and
// the current period's aggregate has bit i of alert_flags set while threshold i is reached. So the
// cap lives in one place (the metric), resets by itself when a new period starts, and the
// middleware needs no alert subscription (the free-tier-alerts example shows that approach). An
// account found over its cap is remembered until its period ends; one under it is checked again
// after CheckEvery.
package saasapi

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"strconv"
	"sync"
	"time"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/batcher"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

// CapThreshold is the threshold code that marks the cap.
const CapThreshold = "hard_cap"

// AccountHeader carries the caller's account id (in a real service: from its API key).
const AccountHeader = "X-Account-ID"

// Metric is the COUNT metric of API calls, capped at hardCap calls per 30-day period.
func Metric(code string, hardCap uint64) *pb.Metric {
	return &pb.Metric{
		Code:       code,
		AggType:    pb.AggType_AGG_TYPE_COUNT,
		Thresholds: []*pb.AlertThreshold{{Code: CapThreshold, Value: hardCap}},
	}
}

// Limiter answers "is this account over its cap this period?" from QueryRealtime, with a cache.
type Limiter struct {
	query      pb.QueryServiceClient
	code       string
	capBit     uint64
	checkEvery time.Duration
	now        func() time.Time

	mu    sync.Mutex
	cache map[uint64]capState
}

type capState struct {
	over      bool
	checkedAt time.Time
	periodEnd time.Time
}

// NewLimiter reads the cap threshold's position from the metric as stored. checkEvery bounds how
// stale an "under the cap" answer may be (0: ask the server on every request).
func NewLimiter(query pb.QueryServiceClient, metric *pb.Metric, checkEvery time.Duration) (*Limiter, error) {
	for i, th := range metric.GetThresholds() {
		if th.GetCode() == CapThreshold {
			return &Limiter{
				query: query, code: metric.GetCode(), capBit: 1 << uint(i), checkEvery: checkEvery,
				now: time.Now, cache: map[uint64]capState{},
			}, nil
		}
	}
	return nil, fmt.Errorf("metric %q has no %q threshold", metric.GetCode(), CapThreshold)
}

// OverCap reports whether the account has reached its cap in the current period.
func (l *Limiter) OverCap(ctx context.Context, account uint64) (bool, error) {
	now := l.now()
	l.mu.Lock()
	st, ok := l.cache[account]
	l.mu.Unlock()
	if ok && st.over && now.Before(st.periodEnd) {
		return true, nil
	}
	if ok && !st.over && now.Sub(st.checkedAt) < l.checkEvery && now.Before(st.periodEnd) {
		return false, nil
	}
	resp, err := l.query.QueryRealtime(ctx, &pb.QueryRealtimeRequest{AccountId: account, MetricCode: l.code})
	if err != nil {
		return false, err
	}
	st = capState{
		over:      resp.GetValue().GetAlertFlags()&l.capBit != 0,
		checkedAt: now,
		periodEnd: time.Unix(0, resp.GetPeriod().GetEndUnixNano()),
	}
	l.mu.Lock()
	l.cache[account] = st
	l.mu.Unlock()
	return st.over, nil
}

// CapChecker tells whether an account has reached its cap. *Limiter asks QueryRealtime; the
// free-tier-alerts example implements it from a cache fed by the alert stream.
type CapChecker interface {
	OverCap(ctx context.Context, account uint64) (bool, error)
}

// Middleware meters and caps the requests of an http.Handler.
type Middleware struct {
	Batcher *batcher.Batcher
	Limiter CapChecker
	Metric  string
	Log     *log.Logger
}

// AccountOf returns the account of a request, from AccountHeader.
func AccountOf(r *http.Request) (uint64, error) {
	id, err := strconv.ParseUint(r.Header.Get(AccountHeader), 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("missing or invalid %s header", AccountHeader)
	}
	return id, nil
}

// Wrap returns next behind the metering middleware.
func (m *Middleware) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		account, err := AccountOf(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		over, err := m.Limiter.OverCap(r.Context(), account)
		if err != nil {
			m.logf("cap check for account %d failed, serving anyway: %v", account, err)
		}
		if over {
			http.Error(w, "usage cap exceeded for this billing period", http.StatusPaymentRequired)
			return
		}
		ev := &pb.Event{AccountId: account, MetricCode: m.Metric, Value: 1, TimeUnixNano: time.Now().UnixNano()}
		if err := m.Batcher.Submit(r.Context(), ev); err != nil {
			m.logf("metering account %d failed, serving anyway: %v", account, err)
		}
		next.ServeHTTP(w, r)
	})
}

func (m *Middleware) logf(format string, args ...any) {
	if m.Log != nil {
		m.Log.Printf(format, args...)
	}
}

// Setup creates the metric if absent and returns the middleware with its batcher (Close it at
// shutdown to send what is queued).
func Setup(ctx context.Context, c *unimeter.Client, code string, hardCap uint64, logger *log.Logger) (*Middleware, error) {
	stored, err := unimeter.EnsureMetric(ctx, c, Metric(code, hardCap))
	if err != nil {
		return nil, err
	}
	lim, err := NewLimiter(c.Query, stored, 250*time.Millisecond)
	if err != nil {
		return nil, err
	}
	b := batcher.New(c.Ingest, batcher.Config{MaxBatch: 1000, Window: 20 * time.Millisecond, Log: logger.Writer()})
	return &Middleware{Batcher: b, Limiter: lim, Metric: code, Log: logger}, nil
}
