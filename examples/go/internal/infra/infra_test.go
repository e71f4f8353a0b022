package infra

import (
	"bytes"
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/testserver"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

var addr string

func TestMain(m *testing.M) { testserver.Exit(m, &addr) }

// t0 starts a 30-day period of a FIXED metric: 19,980 days after the epoch (2024-09-14 UTC).
var t0 = time.Unix(19_980*86_400, 0).UTC()

func period(start, end time.Time) *pb.Period { return unimeter.Range(start, end) }

var thisPeriod = period(t0, t0.Add(30*24*time.Hour))

func usages(account uint64) []Usage {
	h := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Hour) }
	return []Usage{
		{ID: "run-1", Account: account, Provider: "aws", Region: "us-east", Seconds: 45.0, At: h(1)},
		{ID: "run-2", Account: account, Provider: "aws", Region: "us-east", Seconds: 12.5, At: h(2)},
		{ID: "run-3", Account: account, Provider: "aws", Region: "europe", Seconds: 30.25, At: h(3)},
		{ID: "run-4", Account: account, Provider: "gcp", Region: "us-east", Seconds: 7.125, At: h(4)},
		{ID: "run-5", Account: account, Provider: "gcp", Region: "us-west", Seconds: 100, At: h(5)},
		{ID: "run-6", Account: account, Provider: "azure", Region: "europe", Seconds: 0.000001, At: h(6)},
		{ID: "run-7", Account: account, Provider: "aws", Region: "us-east", Seconds: 5.0, At: h(30 * 24)}, // next period
	}
}

func setup(ctx context.Context, t *testing.T, account uint64) *unimeter.Client {
	t.Helper()
	c, err := unimeter.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := unimeter.EnsureMetric(ctx, c, Metric()); err != nil {
		t.Fatal(err)
	}
	if _, err := unimeter.EnsureMetric(ctx, c, Metric()); err != nil { // AlreadyExists is success
		t.Fatalf("second EnsureMetric: %v", err)
	}
	resp, err := Record(ctx, c, usages(account))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetNStored() != 7 || resp.GetNDuplicates() != 0 {
		t.Fatalf("stored %d, duplicates %d; want 7, 0", resp.GetNStored(), resp.GetNDuplicates())
	}
	return c
}

func seconds(ctx context.Context, t *testing.T, c *unimeter.Client, account uint64, p *pb.Period, filters map[string]string) int64 {
	t.Helper()
	got, err := Seconds(ctx, c, account, p, filters)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestScale(t *testing.T) {
	if got := unimeter.Scale(45.0); got != 45_000_000 {
		t.Fatalf("Scale(45.0) = %d", got)
	}
	if got := unimeter.Scale(0.000001); got != 1 {
		t.Fatalf("Scale(0.000001) = %d", got)
	}
	if got := unimeter.Unscale(194_875_001); got != 194.875001 {
		t.Fatalf("Unscale = %v", got)
	}
}

func TestTotalsFilteredOnOneAndBothDimensions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const acct = 42
	c := setup(ctx, t, acct)
	cases := []struct {
		filters map[string]string
		want    int64
	}{
		{nil, 194_875_001}, // 45 + 12.5 + 30.25 + 7.125 + 100 + 0.000001
		{map[string]string{"provider": "aws"}, 87_750_000},
		{map[string]string{"region": "us-east"}, 64_625_000},
		{map[string]string{"provider": "aws", "region": "us-east"}, 57_500_000},
		{map[string]string{"provider": "gcp", "region": "europe"}, 0},
		{map[string]string{"provider": "azure"}, 1},
	}
	for _, tc := range cases {
		if got := seconds(ctx, t, c, acct, thisPeriod, tc.filters); got != tc.want {
			t.Errorf("filters %v: %d, want %d", tc.filters, got, tc.want)
		}
	}
	next := period(t0.Add(30*24*time.Hour), t0.Add(60*24*time.Hour))
	if got := seconds(ctx, t, c, acct, next, map[string]string{"provider": "aws"}); got != 5_000_000 {
		t.Errorf("next period: %d, want 5000000", got)
	}
	// Ranges are exact to the nanosecond: run-2 ended at exactly t0+2h.
	h := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Hour) }
	if got := seconds(ctx, t, c, acct, period(h(1), h(2)), nil); got != 45_000_000 {
		t.Errorf("[1h, 2h): %d, want 45000000", got)
	}
	if got := seconds(ctx, t, c, acct, period(h(1), h(2).Add(time.Nanosecond)), nil); got != 57_500_000 {
		t.Errorf("[1h, 2h+1ns): %d, want 57500000", got)
	}
	if got := seconds(ctx, t, c, acct+1, thisPeriod, nil); got != 0 {
		t.Errorf("another account: %d, want 0", got)
	}
}

func TestGroupBy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const acct = 43
	c := setup(ctx, t, acct)
	both, err := Breakdown(ctx, c, acct, thisPeriod, nil, "provider", "region")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{
		"aws/us-east":  57_500_000,
		"aws/europe":   30_250_000,
		"gcp/us-east":  7_125_000,
		"gcp/us-west":  100_000_000,
		"azure/europe": 1,
	}
	if !maps.Equal(both, want) {
		t.Errorf("by provider and region: %v, want %v", both, want)
	}
	usEast, err := Breakdown(ctx, c, acct, thisPeriod, map[string]string{"region": "us-east"}, "provider")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int64{"aws": 57_500_000, "gcp": 7_125_000}; !maps.Equal(usEast, want) {
		t.Errorf("us-east by provider: %v, want %v", usEast, want)
	}
}

func TestResentRunsAreDuplicates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const acct = 44
	c := setup(ctx, t, acct)
	resp, err := Record(ctx, c, usages(acct)) // a retry after a lost acknowledgement
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetNStored() != 0 || resp.GetNDuplicates() != 7 {
		t.Fatalf("resend: stored %d, duplicates %d; want 0, 7", resp.GetNStored(), resp.GetNDuplicates())
	}
	if got := seconds(ctx, t, c, acct, thisPeriod, nil); got != 194_875_001 {
		t.Fatalf("total after resend: %d, want 194875001", got)
	}
}

func TestUndeclaredDimensionValueIsRejectedWithItsField(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const acct = 45
	c := setup(ctx, t, acct)
	bad := []Usage{
		{ID: "ok", Account: acct, Provider: "aws", Region: "us-east", Seconds: 1, At: t0.Add(time.Minute)},
		{ID: "mars", Account: acct, Provider: "aws", Region: "mars", Seconds: 1, At: t0.Add(time.Minute)},
	}
	_, err := Record(ctx, c, bad)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("err = %v, want InvalidArgument", err)
	}
	var out bytes.Buffer
	unimeter.PrintError(&out, "record", err)
	if !strings.Contains(out.String(), "\n  events[1].properties[region]: ") {
		t.Errorf("printed:\n%s\nwant a field violation for events[1].properties[region]", out.String())
	}
	if got := unimeter.BadEvents(err); len(got) != 1 || got[0] != 1 {
		t.Errorf("BadEvents = %v, want [1]", got)
	}
	if got := seconds(ctx, t, c, acct, thisPeriod, nil); got != 194_875_001 {
		t.Errorf("total = %d: nothing of a rejected batch may be stored", got)
	}
	_, err = Seconds(ctx, c, acct, thisPeriod, map[string]string{"instance_type": "m5"})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("filter on an undeclared key: err = %v, want InvalidArgument", err)
	}
}
