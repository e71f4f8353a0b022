// Package infra is the infra-metering example: compute seconds as a SUM metric with two declared
// dimensions, provider and region, queried in total, filtered on one or both dimensions, and
// grouped by them.
//
// Seconds are fractional, so values travel in fixed point with six decimals: unimeter.Scale(45.0)
// is 45_000_000, and sums come back in the same units (unimeter.Unscale converts back).
package infra

import (
	"context"
	"strings"
	"time"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

// MetricCode is the metric of this example.
const MetricCode = "compute_seconds"

// Metric is compute seconds summed, with the dimensions a query may filter or group on. Events
// whose provider or region is not one of these values are rejected (InvalidArgument).
func Metric() *pb.Metric {
	return &pb.Metric{
		Code:    MetricCode,
		AggType: pb.AggType_AGG_TYPE_SUM,
		Filters: []*pb.DimensionFilter{
			{Key: "provider", Values: []string{"aws", "gcp", "azure"}},
			{Key: "region", Values: []string{"us-east", "us-west", "europe"}},
		},
	}
}

// Usage is one measured run of compute.
type Usage struct {
	ID       string // the run's id: resending the same run is then a duplicate, never counted twice
	Account  uint64
	Provider string
	Region   string
	Seconds  float64
	At       time.Time // when the run ended: the period it is billed in
}

// Event is the usage as an Ingest event.
func (u Usage) Event() *pb.Event {
	return &pb.Event{
		AccountId:    u.Account,
		MetricCode:   MetricCode,
		Value:        unimeter.Scale(u.Seconds),
		TimeUnixNano: u.At.UnixNano(),
		Properties:   map[string]string{"provider": u.Provider, "region": u.Region},
		EventId:      u.ID,
	}
}

// Record sends usages in one batch (retrying transient failures).
func Record(ctx context.Context, c *unimeter.Client, usages []Usage) (*pb.IngestResponse, error) {
	events := make([]*pb.Event, len(usages))
	for i, u := range usages {
		events[i] = u.Event()
	}
	return unimeter.Ingest(ctx, c, events)
}

// query is a Query of this metric over period; a nil period means the metric's current period.
func query(account uint64, period *pb.Period, filters map[string]string, groupBy []string) *pb.QueryRequest {
	req := &pb.QueryRequest{AccountId: account, MetricCode: MetricCode, Period: period, Filters: filters, GroupBy: groupBy}
	if period == nil {
		req.PeriodSelector = pb.PeriodSelector_PERIOD_SELECTOR_CURRENT
	}
	return req
}

// Seconds returns the account's compute seconds in period (nil: the current one), in fixed point
// with six decimals, among the events matching every filter (for example {"provider": "aws",
// "region": "us-east"}; nil: all events).
func Seconds(ctx context.Context, c *unimeter.Client, account uint64, period *pb.Period, filters map[string]string) (int64, error) {
	resp, err := c.Query.Query(ctx, query(account, period, filters, nil))
	if err != nil {
		return 0, err
	}
	return resp.GetValue().GetSum(), nil
}

// Breakdown returns the account's compute seconds in period (nil: the current one) per combination of the keys' values
// (after filters), keyed by the values joined with "/" in the order of keys: "aws/us-east".
func Breakdown(ctx context.Context, c *unimeter.Client, account uint64, period *pb.Period, filters map[string]string, keys ...string) (map[string]int64, error) {
	resp, err := c.Query.Query(ctx, query(account, period, filters, keys))
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(resp.GetGroups()))
	for _, g := range resp.GetGroups() {
		vals := make([]string, len(keys))
		for i, k := range keys {
			vals[i] = g.GetKey()[k]
		}
		out[strings.Join(vals, "/")] = g.GetValue().GetSum()
	}
	return out, nil
}
