package unimeter

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// FieldViolations returns the BadRequest field violations of a failed call (InvalidArgument
// carries one per bad field, for example "events[7].metric_code"), or nil.
func FieldViolations(err error) []*errdetails.BadRequest_FieldViolation {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	var out []*errdetails.BadRequest_FieldViolation
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			out = append(out, br.GetFieldViolations()...)
		}
	}
	return out
}

// Reason returns the ErrorInfo reason of a failed call (UPPER_SNAKE, domain "unimeter"), or "".
func Reason(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// RetryDelay returns the delay the server asked for in a RetryInfo detail, if any.
func RetryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// PrintError writes a failed call the way an operator wants to read it: the operation, the gRPC
// code and message, the ErrorInfo reason, and one line per BadRequest field violation:
//
//	ingest: InvalidArgument: 1 invalid event (UNKNOWN_METRIC)
//	  events[0].metric_code: unknown metric "api_call"
func PrintError(w io.Writer, op string, err error) {
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintf(w, "%s: %v\n", op, err)
		return
	}
	line := fmt.Sprintf("%s: %s: %s", op, st.Code(), st.Message())
	if r := Reason(err); r != "" {
		line += " (" + r + ")"
	}
	fmt.Fprintln(w, line)
	for _, v := range FieldViolations(err) {
		fmt.Fprintf(w, "  %s: %s\n", v.GetField(), v.GetDescription())
	}
}

// Fatal prints a failed call with PrintError to stderr and exits with status 1: for main packages.
func Fatal(op string, err error) {
	PrintError(os.Stderr, op, err)
	os.Exit(1)
}

var eventIndex = regexp.MustCompile(`^events\[(\d+)\]`)

// EventIndex returns the index of the Ingest event a field violation names: 3 for
// "events[3].value".
func EventIndex(field string) (int, bool) {
	m := eventIndex.FindStringSubmatch(field)
	if m == nil {
		return 0, false
	}
	i, err := strconv.Atoi(m[1])
	return i, err == nil
}

// BadEvents returns, in increasing order, the indexes of the events of an Ingest request that an
// InvalidArgument error names in its field violations. Since a batch with any invalid event is
// stored not at all, a sender can set those events aside and send the rest again.
func BadEvents(err error) []int {
	seen := map[int]bool{}
	for _, v := range FieldViolations(err) {
		if i, ok := EventIndex(v.GetField()); ok {
			seen[i] = true
		}
	}
	out := make([]int, 0, len(seen))
	for i := range seen {
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}
