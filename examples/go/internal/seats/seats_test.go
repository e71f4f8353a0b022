package seats

import (
	"context"
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

func day(month time.Month, d int) time.Time { return time.Date(2025, month, d, 9, 0, 0, 0, time.UTC) }

func history(account uint64) []Change {
	return []Change{
		{Account: account, User: 1, At: day(time.January, 3)},
		{Account: account, User: 2, At: day(time.January, 3)},
		{Account: account, User: 3, At: day(time.January, 3)},
		{Account: account, User: 2, Removed: true, At: day(time.January, 10)},
		{Account: account, User: 3, At: day(time.January, 20)}, // already a member: no change
		{Account: account, User: 4, At: day(time.February, 2)},
		{Account: account, User: 1, Removed: true, At: day(time.February, 5)},
		{Account: account, User: 99, Removed: true, At: day(time.February, 6)}, // never a member: no-op
	}
}

func setup(ctx context.Context, t *testing.T, account uint64) *unimeter.Client {
	t.Helper()
	c, err := unimeter.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := Setup(ctx, c); err != nil {
		t.Fatal(err)
	}
	resp, err := Apply(ctx, c, history(account))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetNStored() != 16 || resp.GetNDuplicates() != 0 {
		t.Fatalf("stored %d, duplicates %d; want 16, 0", resp.GetNStored(), resp.GetNDuplicates())
	}
	return c
}

func count(ctx context.Context, t *testing.T, c *unimeter.Client, account uint64, code string, p *pb.Period) int64 {
	t.Helper()
	n, err := Count(ctx, c, account, code, p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSeatsPerMonthWithAndWithoutCarryOver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const acct = 100
	c := setup(ctx, t, acct)
	jan, feb, mar := Month(2025, time.January), Month(2025, time.February), Month(2025, time.March)
	cases := []struct {
		code   string
		period *pb.Period
		want   int64
	}{
		{ActiveSeats, jan, 2}, // {1, 3}
		{Seats, jan, 2},       // {1, 3}
		{ActiveSeats, feb, 1}, // February starts empty: {4}; removing 1 is a no-op
		{Seats, feb, 2},       // {1, 3} carried, + 4, - 1 = {3, 4}
		{ActiveSeats, mar, 0},
		{Seats, mar, 2}, // no changes in March: the roster carries
		// Carry-over over a range: the set after every event before its end (Feb 3 09:00: {1, 3, 4}).
		{Seats, unimeter.Range(day(time.February, 1), day(time.February, 3)), 3},
		{ActiveSeats, unimeter.Range(day(time.February, 1), day(time.February, 3)), 1},
	}
	for _, tc := range cases {
		if got := count(ctx, t, c, acct, tc.code, tc.period); got != tc.want {
			t.Errorf("%s over [%v, %v): %d seats, want %d", tc.code,
				time.Unix(0, tc.period.GetStartUnixNano()).UTC(), time.Unix(0, tc.period.GetEndUnixNano()).UTC(), got, tc.want)
		}
	}
	// This month and last month have no events: the per-month set is empty, the roster carries.
	for code, want := range map[string]int64{ActiveSeats: 0, Seats: 2} {
		now, err := Now(ctx, c, acct, code)
		if err != nil {
			t.Fatal(err)
		}
		last, err := Count(ctx, c, acct, code, nil)
		if err != nil {
			t.Fatal(err)
		}
		if now != want || last != want {
			t.Errorf("%s: %d now, %d last month; want %d", code, now, last, want)
		}
	}
}

func TestResentChangesAreDuplicates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const acct = 101
	c := setup(ctx, t, acct)
	resp, err := Apply(ctx, c, history(acct))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetNStored() != 0 || resp.GetNDuplicates() != 16 {
		t.Fatalf("resend: stored %d, duplicates %d; want 0, 16", resp.GetNStored(), resp.GetNDuplicates())
	}
	if got := count(ctx, t, c, acct, Seats, Month(2025, time.February)); got != 2 {
		t.Fatalf("seats in February after resend: %d, want 2", got)
	}
	// The same user added again later is not a duplicate event, but it is already a member.
	if _, err := Apply(ctx, c, []Change{{Account: acct, User: 4, At: day(time.February, 20)}}); err != nil {
		t.Fatal(err)
	}
	if got := count(ctx, t, c, acct, Seats, Month(2025, time.February)); got != 2 {
		t.Fatalf("seats in February after re-adding user 4: %d, want 2", got)
	}
}

func TestZeroAccountIsRejectedWithItsField(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := unimeter.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := Setup(ctx, c); err != nil {
		t.Fatal(err)
	}
	_, err = unimeter.Ingest(ctx, c, []*pb.Event{{AccountId: 0, MetricCode: Seats, Value: 1}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("account 0: err = %v, want InvalidArgument", err)
	}
	if v := unimeter.FieldViolations(err); len(v) != 1 || v[0].GetField() != "events[0].account_id" {
		t.Fatalf("violations = %v, want one on events[0].account_id", v)
	}
}
