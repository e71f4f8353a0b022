// Package seats is the seat-based example: COUNT_UNIQUE metrics fed with ADD and REMOVE events
// whose value is the user id, billed per calendar month.
//
// Two metrics receive the same events, to show the two meanings of "seats in a month":
//
//   - active_seats: each month starts with an empty set, so it counts the users added (and not
//     removed again) during that month: per-period activity.
//   - seats (carry_over): the set carries across months, so at any time it holds every user added
//     and not removed before it: the roster you bill for. Querying a month returns the roster at
//     the month's end; QueryRealtime returns it now.
//
// Changes carry their own time and no event id: the server then deduplicates them by (time, value,
// operation, properties), so sending the same change twice is harmless.
package seats

import (
	"context"
	"time"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

// Metric codes of this example.
const (
	ActiveSeats = "active_seats"
	Seats       = "seats"
)

// Metrics returns the two COUNT_UNIQUE metrics, both on calendar months starting on the 1st (UTC).
func Metrics() []*pb.Metric {
	return []*pb.Metric{
		{Code: ActiveSeats, AggType: pb.AggType_AGG_TYPE_COUNT_UNIQUE, PeriodType: pb.PeriodType_PERIOD_TYPE_CALENDAR},
		{Code: Seats, AggType: pb.AggType_AGG_TYPE_COUNT_UNIQUE, PeriodType: pb.PeriodType_PERIOD_TYPE_CALENDAR, CarryOver: true},
	}
}

// Change gives a user a seat or takes it away.
type Change struct {
	Account uint64
	User    uint64
	Removed bool
	At      time.Time
}

// Events returns one event per change and metric.
func Events(changes []Change) []*pb.Event {
	var out []*pb.Event
	for _, ch := range changes {
		op := pb.OperationType_OPERATION_TYPE_ADD
		if ch.Removed {
			op = pb.OperationType_OPERATION_TYPE_REMOVE
		}
		for _, code := range []string{ActiveSeats, Seats} {
			out = append(out, &pb.Event{
				AccountId: ch.Account, MetricCode: code, Value: ch.User, Operation: op, TimeUnixNano: ch.At.UnixNano(),
			})
		}
	}
	return out
}

// Setup creates both metrics if absent.
func Setup(ctx context.Context, c *unimeter.Client) error {
	for _, m := range Metrics() {
		if _, err := unimeter.EnsureMetric(ctx, c, m); err != nil {
			return err
		}
	}
	return nil
}

// Apply records changes.
func Apply(ctx context.Context, c *unimeter.Client, changes []Change) (*pb.IngestResponse, error) {
	return unimeter.Ingest(ctx, c, Events(changes))
}

// Month returns a calendar month in UTC as a query range.
func Month(year int, month time.Month) *pb.Period {
	start := time.Date(year, month, 1, 0, 0, 0, 0, time.UTC)
	return unimeter.Range(start, start.AddDate(0, 1, 0))
}

// Count returns the number of seats of metric code over period (nil: the metric's previous
// period, the one to invoice). For COUNT_UNIQUE, Count equals UniqueCount: the set's size.
func Count(ctx context.Context, c *unimeter.Client, account uint64, code string, period *pb.Period) (int64, error) {
	req := &pb.QueryRequest{AccountId: account, MetricCode: code, Period: period}
	if period == nil {
		req.PeriodSelector = pb.PeriodSelector_PERIOD_SELECTOR_PREVIOUS
	}
	resp, err := c.Query.Query(ctx, req)
	if err != nil {
		return 0, err
	}
	return resp.GetValue().GetCount(), nil
}

// Now returns the number of seats of metric code in the current period.
func Now(ctx context.Context, c *unimeter.Client, account uint64, code string) (int64, error) {
	resp, err := c.Query.QueryRealtime(ctx, &pb.QueryRealtimeRequest{AccountId: account, MetricCode: code})
	if err != nil {
		return 0, err
	}
	return resp.GetValue().GetCount(), nil
}
