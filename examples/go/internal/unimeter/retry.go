package unimeter

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Backoff is an exponential backoff policy for Retry.
type Backoff struct {
	Initial     time.Duration // first delay
	Max         time.Duration // cap of the exponential delay (a server's RetryInfo may ask for more)
	Multiplier  float64       // growth per attempt
	MaxAttempts int           // total tries including the first; 0 means until ctx is done
}

// DefaultBackoff starts at 50 ms, doubles up to 2 s and gives up after 8 tries (about 6 s).
var DefaultBackoff = Backoff{Initial: 50 * time.Millisecond, Max: 2 * time.Second, Multiplier: 2, MaxAttempts: 8}

// Retryable reports whether a failed call may succeed if sent again unchanged: Unavailable (no
// reachable owner for a partition, a restarting node) and ResourceExhausted (backpressure).
// Bad input (InvalidArgument), AlreadyExists, NotFound and the rest are final.
func Retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted:
		return true
	}
	return false
}

// sleep waits d or until ctx is done; a variable so tests can observe the delays.
var sleep = func(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Delay is the wait before retry number attempt (1 for the first retry) after err: the exponential
// delay with jitter (between half and all of it), but never less than a RetryInfo delay that the
// server sent.
func (b Backoff) Delay(attempt int, err error) time.Duration {
	d := float64(b.Initial)
	for i := 1; i < attempt; i++ {
		d *= b.Multiplier
		if d >= float64(b.Max) {
			d = float64(b.Max)
			break
		}
	}
	jittered := time.Duration(d/2 + rand.Float64()*d/2)
	if server, ok := RetryDelay(err); ok && server > jittered {
		return server
	}
	return jittered
}

// Retry calls fn until it succeeds, fails with an error that is not Retryable, the policy's
// attempts are used up, or ctx is done while waiting; it returns fn's last error.
// fn must be safe to repeat: for Ingest, that means every event carries an EventId or its own time.
func Retry(ctx context.Context, b Backoff, fn func(ctx context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !Retryable(err) || (b.MaxAttempts > 0 && attempt >= b.MaxAttempts) {
			return err
		}
		if waitErr := sleep(ctx, b.Delay(attempt, err)); waitErr != nil {
			return err
		}
	}
}
