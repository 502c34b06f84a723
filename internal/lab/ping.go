package lab

import (
	"bytes"
	"math"
	"slices"
	"sync"
	"time"
)

// PingOptions control Ping.
type PingOptions struct {
	// Count is how many echo requests to send; 0 sends until ctx ends.
	Count int
	// Interval between requests (default 10ms).
	Interval time.Duration
	// Wait is how long to wait for replies after the last request
	// (default 1s).
	Wait time.Duration
	// Size is the ICMP payload size in bytes (default 56, as ping).
	Size int
}

func (o PingOptions) withDefaults() PingOptions {
	if o.Interval == 0 {
		o.Interval = 10 * time.Millisecond
	}
	if o.Wait == 0 {
		o.Wait = time.Second
	}
	if o.Size == 0 {
		o.Size = 56
	}
	return o
}

// PingResult counts one ping run.
type PingResult struct {
	Sent     int
	Received int
	// RTTs of the replies, in arrival order.
	RTTs []time.Duration
	// Outages are the runs of consecutive requests that got no reply, in
	// order: how long traffic stopped, e.g. while an agent restarted.
	Outages []Outage
}

// Outage is a run of consecutive echo requests without a reply.
type Outage struct {
	// First is when the first unanswered request of the run was sent.
	First time.Time
	// Lost is the number of requests in the run.
	Lost int
	// Span is how long traffic was lost: Lost times the interval, i.e.
	// from the first unanswered request to the next one answered.
	Span time.Duration
}

// MaxOutage is the longest outage, zero if every request was answered.
func (r PingResult) MaxOutage() Outage {
	var m Outage
	for _, o := range r.Outages {
		if o.Lost > m.Lost {
			m = o
		}
	}
	return m
}

// Lost is the number of requests without a reply.
func (r PingResult) Lost() int { return r.Sent - r.Received }

// Percentile returns the p-th percentile (0..100) of the RTTs by the
// nearest-rank method, or 0 without replies.
func (r PingResult) Percentile(p float64) time.Duration {
	return percentile(r.RTTs, p)
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// pingTracker matches replies to requests: sequence numbers are 16 bits,
// so at 100 pps they wrap after 11 minutes; a reply is counted once, and
// only for a request still outstanding.
type pingTracker struct {
	mu      sync.Mutex // guards the fields below
	sent    map[uint16]time.Time
	result  PingResult
	payload []byte
}

func newPingTracker(size int) *pingTracker {
	p := bytes.Repeat([]byte("tulle-lab-ping!"), size/15+1)[:size]
	return &pingTracker{sent: map[uint16]time.Time{}, payload: p}
}

func (t *pingTracker) onSend(seq uint16, at time.Time) {
	t.mu.Lock()
	t.sent[seq] = at
	t.result.Sent++
	t.mu.Unlock()
}

// onReply records a reply; it reports whether it matched a request.
func (t *pingTracker) onReply(seq uint16, payload []byte, at time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	sentAt, ok := t.sent[seq]
	if !ok || !bytes.Equal(payload, t.payload) {
		return false
	}
	delete(t.sent, seq)
	t.result.Received++
	t.result.RTTs = append(t.result.RTTs, at.Sub(sentAt))
	return true
}

func (t *pingTracker) outstanding() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.sent)
}

// snapshot returns the counts so far; requests still outstanding count as
// lost and are grouped into outages of consecutive sequence numbers.
func (t *pingTracker) snapshot(interval time.Duration) PingResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.result
	r.RTTs = slices.Clone(r.RTTs)
	r.Outages = outages(t.sent, interval)
	return r
}

// outages groups unanswered requests (sequence -> send time) into runs of
// consecutive sequence numbers (modulo 2^16), in sending order.
func outages(lost map[uint16]time.Time, interval time.Duration) []Outage {
	type req struct {
		seq uint16
		at  time.Time
	}
	reqs := make([]req, 0, len(lost))
	for s, at := range lost {
		reqs = append(reqs, req{s, at})
	}
	slices.SortFunc(reqs, func(a, b req) int { return a.at.Compare(b.at) })
	var out []Outage
	for i, q := range reqs {
		if i > 0 && q.seq == reqs[i-1].seq+1 {
			out[len(out)-1].Lost++
			out[len(out)-1].Span += interval
			continue
		}
		out = append(out, Outage{First: q.at, Lost: 1, Span: interval})
	}
	return out
}
