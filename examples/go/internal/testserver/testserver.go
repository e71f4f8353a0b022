// Package testserver starts a real `unimeter serve` for the examples' tests: on 127.0.0.1, port 0,
// in its own data directory, and reads its address from the JSON ready line it prints on stdout.
package testserver

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is a running `unimeter serve` child process.
type Server struct {
	Addr     string // host:port of the gRPC API, from the ready line
	DataDir  string
	cmd      *exec.Cmd
	done     chan struct{}
	waitErr  error
	stopOnce sync.Once
}

// Binary returns the unimeter executable: $UNIMETER_SERVE_BIN, or .venv/bin/unimeter of the
// repository that contains the current directory (`make test` creates it).
func Binary() (string, error) {
	if b := os.Getenv("UNIMETER_SERVE_BIN"); b != "" {
		return b, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "proto", "unimeter", "v1", "types.proto")); err == nil {
			bin := filepath.Join(dir, ".venv", "bin", "unimeter")
			if _, err := os.Stat(bin); err != nil {
				return "", fmt.Errorf("%s is missing: run `make venv` (or `make test`) in %s first", bin, dir)
			}
			return bin, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no Unimeter repository above the current directory; set UNIMETER_SERVE_BIN")
		}
		dir = parent
	}
}

// Start runs `unimeter serve --data-dir dataDir --grpc-addr 127.0.0.1:0 --log-level WARNING` and
// waits (bounded by ctx) for its ready line. The server's stderr goes to this process's stderr.
func Start(ctx context.Context, dataDir string) (*Server, error) {
	return StartAt(ctx, dataDir, "127.0.0.1:0")
}

// StartAt is Start on a given gRPC address: to restart a server where its clients expect it.
func StartAt(ctx context.Context, dataDir, grpcAddr string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "--data-dir", dataDir, "--grpc-addr", grpcAddr, "--log-level", "WARNING")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	setParentDeathSignal(cmd.SysProcAttr) // no orphaned servers if the test binary is killed
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &Server{DataDir: dataDir, cmd: cmd, done: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var msg struct {
				Event    string `json:"event"`
				GRPCAddr string `json:"grpc_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &msg) == nil && msg.Event == "ready" {
				ready <- msg.GRPCAddr
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout) // keep draining so the server never blocks on stdout
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	select {
	case addr := <-ready:
		s.Addr = addr
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("unimeter serve exited before it was ready: %v", s.waitErr)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-s.done
		return nil, fmt.Errorf("unimeter serve not ready: %w", ctx.Err())
	}
}

// Stop ends the server gracefully (SIGTERM), killing it if it has not exited within 15 s.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	})
	return s.waitErr
}

// Kill ends the server with SIGKILL: no flush, no snapshot, like a crash or a power cut.
func (s *Server) Kill() error {
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Kill()
		<-s.done
	})
	return nil
}

// ForTest starts a server in a fresh temporary directory and stops it when the test ends. It fails
// the test (never skips it) when the server cannot be started.
func ForTest(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := Start(ctx, t.TempDir())
	if err != nil {
		t.Fatalf("start unimeter: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s
}

// Exit runs a package's tests against one shared server (its address in *addr), started before
// and stopped after them, and exits: call it from TestMain. A server that cannot start fails the
// package.
func Exit(m *testing.M, addr *string) { os.Exit(run(m, addr)) }

func run(m *testing.M, addr *string) int {
	dir, err := os.MkdirTemp("", "unimeter-go-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	s, err := Start(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: start unimeter: %v\n", err)
		return 1
	}
	*addr = s.Addr
	code := m.Run()
	if err := s.Stop(); err != nil && code == 0 {
		fmt.Fprintf(os.Stderr, "unimeter serve exited with %v\n", err)
	}
	return code
}
