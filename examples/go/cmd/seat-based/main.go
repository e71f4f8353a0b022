// Command seat-based gives users of one account seats, takes one away, and prints the seat counts:
// this month's active seats, the carried-over roster, and last month's roster (what to invoice).
//
//	UNIMETER_ADDR=127.0.0.1:50051 go run ./cmd/seat-based
package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/unimeter/unimeter/examples/go/internal/seats"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

const account = 100

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := unimeter.Dial(unimeter.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	if err := seats.Setup(ctx, client); err != nil {
		unimeter.Fatal("create metrics", err)
	}

	now := time.Now()
	changes := []seats.Change{
		{Account: account, User: 1001, At: now},
		{Account: account, User: 1002, At: now},
		{Account: account, User: 1003, At: now},
		{Account: account, User: 1002, Removed: true, At: now.Add(time.Millisecond)}, // user 1002 left
	}
	if _, err := seats.Apply(ctx, client, changes); err != nil {
		unimeter.Fatal("apply", err)
	}
	for _, code := range []string{seats.ActiveSeats, seats.Seats} {
		current, err := seats.Now(ctx, client, account, code)
		if err != nil {
			unimeter.Fatal("query", err)
		}
		last, err := seats.Count(ctx, client, account, code, nil)
		if err != nil {
			unimeter.Fatal("query", err)
		}
		fmt.Printf("%-12s this month: %d, last month: %d\n", code, current, last)
	}
}
