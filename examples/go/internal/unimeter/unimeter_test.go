package unimeter

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/testserver"
)

var addr string

func TestMain(m *testing.M) { testserver.Exit(m, &addr) }

// recordSleeps replaces sleep for the test, recording the delays without waiting.
func recordSleeps(t *testing.T) *[]time.Duration {
	var delays []time.Duration
	orig := sleep
	sleep = func(ctx context.Context, d time.Duration) error {
		delays = append(delays, d)
		return ctx.Err()
	}
	t.Cleanup(func() { sleep = orig })
	return &delays
}

func withRetryInfo(t *testing.T, c codes.Code, delay time.Duration) error {
	t.Helper()
	st, err := status.New(c, "slow down").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

var testBackoff = Backoff{Initial: 10 * time.Millisecond, Max: 80 * time.Millisecond, Multiplier: 2, MaxAttempts: 6}

func TestRetryRetriesUnavailableAndResourceExhaustedUntilSuccess(t *testing.T) {
	delays := recordSleeps(t)
	calls := 0
	err := Retry(context.Background(), testBackoff, func(context.Context) error {
		calls++
		switch calls {
		case 1:
			return status.Error(codes.Unavailable, "no owner")
		case 2:
			return status.Error(codes.ResourceExhausted, "busy")
		}
		return nil
	})
	if err != nil || calls != 3 || len(*delays) != 2 {
		t.Fatalf("err %v, %d calls, %d waits; want nil, 3, 2", err, calls, len(*delays))
	}
}

func TestRetryGivesUpOnBadInputAtOnce(t *testing.T) {
	recordSleeps(t)
	for _, c := range []codes.Code{codes.InvalidArgument, codes.AlreadyExists, codes.NotFound, codes.OutOfRange, codes.Internal} {
		calls := 0
		err := Retry(context.Background(), testBackoff, func(context.Context) error {
			calls++
			return status.Error(c, "no")
		})
		if status.Code(err) != c || calls != 1 {
			t.Errorf("%v: err %v after %d calls; want it returned after 1", c, err, calls)
		}
	}
}

func TestRetryBacksOffExponentiallyUpToMaxAndStopsAfterMaxAttempts(t *testing.T) {
	delays := recordSleeps(t)
	calls := 0
	err := Retry(context.Background(), testBackoff, func(context.Context) error {
		calls++
		return status.Error(codes.Unavailable, "down")
	})
	if status.Code(err) != codes.Unavailable || calls != 6 || len(*delays) != 5 {
		t.Fatalf("err %v, %d calls, %d waits; want Unavailable, 6, 5", err, calls, len(*delays))
	}
	// Full delays 10, 20, 40, 80, 80 ms; each wait is between half and all of it.
	for i, full := range []time.Duration{10, 20, 40, 80, 80} {
		full *= time.Millisecond
		if d := (*delays)[i]; d < full/2 || d > full {
			t.Errorf("wait %d = %v, want within [%v, %v]", i+1, d, full/2, full)
		}
	}
}

func TestRetryHonoursRetryInfo(t *testing.T) {
	delays := recordSleeps(t)
	calls := 0
	err := Retry(context.Background(), testBackoff, func(context.Context) error {
		calls++
		if calls == 1 {
			return withRetryInfo(t, codes.ResourceExhausted, 700*time.Millisecond)
		}
		return nil
	})
	if err != nil || len(*delays) != 1 || (*delays)[0] != 700*time.Millisecond {
		t.Fatalf("err %v, waits %v; want one wait of 700ms", err, *delays)
	}
}

func TestRetryStopsWhenTheContextIsDone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := Retry(ctx, Backoff{Initial: time.Second, Max: time.Second, Multiplier: 2}, func(context.Context) error {
		return status.Error(codes.Unavailable, "down")
	})
	if status.Code(err) != codes.Unavailable || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("err %v after %v; want Unavailable soon after the deadline", err, time.Since(start))
	}
}

func TestNewEventIDIsAUUIDv7(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := NewEventID()
		if !re.MatchString(id) || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		seen[id] = true
	}
}

func TestEventIndex(t *testing.T) {
	for field, want := range map[string]int{"events[0].metric_code": 0, "events[12].properties[region]": 12, "events[3]": 3} {
		if got, ok := EventIndex(field); !ok || got != want {
			t.Errorf("EventIndex(%q) = %d, %v", field, got, ok)
		}
	}
	for _, field := range []string{"events", "delivery", "metric.code"} {
		if _, ok := EventIndex(field); ok {
			t.Errorf("EventIndex(%q) matched", field)
		}
	}
}

// The tests below run against a real server.

func TestUnknownMetricPrintsItsFieldViolation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = Ingest(ctx, c, []*pb.Event{{AccountId: 42, MetricCode: "api_call", Value: 1}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("err = %v, want InvalidArgument", err)
	}
	var out bytes.Buffer
	PrintError(&out, "ingest", err)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ingest: InvalidArgument: ") ||
		!strings.HasPrefix(lines[1], "  events[0].metric_code: ") || !strings.Contains(lines[1], "api_call") {
		t.Fatalf("printed:\n%s\nwant the code line, then \"  events[0].metric_code: ...\"", out.String())
	}
	if Reason(err) == "" {
		t.Error("no ErrorInfo reason")
	}
}

func TestEnsureMetricTreatsAlreadyExistsAsSuccess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first, err := EnsureMetric(ctx, c, &pb.Metric{Code: "api_calls", Thresholds: []*pb.AlertThreshold{{Code: "cap", Value: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	// A second instance starting with another definition gets the stored one back.
	again, err := EnsureMetric(ctx, c, &pb.Metric{Code: "api_calls", AggType: pb.AggType_AGG_TYPE_SUM})
	if err != nil {
		t.Fatalf("second EnsureMetric: %v", err)
	}
	if again.GetAggType() != pb.AggType_AGG_TYPE_COUNT || again.GetCreateTimeUnixNano() != first.GetCreateTimeUnixNano() ||
		len(again.GetThresholds()) != 1 {
		t.Fatalf("got %v, want the stored metric %v", again, first)
	}
	_, err = EnsureMetric(ctx, c, &pb.Metric{Code: "9 lives"})
	if status.Code(err) != codes.InvalidArgument || len(FieldViolations(err)) == 0 {
		t.Fatalf("bad code: err = %v, want InvalidArgument with a field violation", err)
	}
}

func TestIngestWaitsOutResourceExhaustedWithRetryInfo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var pushedBack atomic.Int32
	backpressure := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == pb.IngestService_Ingest_FullMethodName && pushedBack.Add(1) == 1 {
			return withRetryInfo(t, codes.ResourceExhausted, 150*time.Millisecond) // as an overloaded node answers
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	c, err := Dial(addr, grpc.WithUnaryInterceptor(backpressure))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := EnsureMetric(ctx, c, &pb.Metric{Code: "calls"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := Ingest(ctx, c, []*pb.Event{{AccountId: 1, MetricCode: "calls", Value: 1, EventId: NewEventID()}})
	if err != nil || resp.GetNStored() != 1 {
		t.Fatalf("Ingest = %v, %v; want 1 stored", resp, err)
	}
	if took := time.Since(start); took < 150*time.Millisecond || pushedBack.Load() != 2 {
		t.Fatalf("%d tries in %v; want 2, at least 150ms apart", pushedBack.Load(), took)
	}
}
