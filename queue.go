// Queues: RabbitMQ, or in-process when BROKER_URL is empty, carrying image ids from the API to the
// workers. What a job does with an id is in jobs.go; the database row is the truth.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// jobOutcome is what the handler tells the queue to do with a job.
type jobOutcome int

const (
	jobDone      jobOutcome = iota // finished, or nothing to do: acknowledge
	jobRetry                       // failed this time: deliver again after the delay
	jobDead                        // failed for good: to the dead-letter queue
	jobAbandoned                   // shutdown came first: deliver again, to any worker, at once
)

// jobHandler processes image id; ctx ends when the worker must give the job up.
type jobHandler func(ctx context.Context, id int64) (jobOutcome, time.Duration)

// jobQueue carries image ids from the API to workers, the highest priority first (FIFO within one).
type jobQueue interface {
	// publish returns nil once the queue holds the job durably (a confirmed publish).
	publish(ctx context.Context, id int64, priority uint8) error
	// consume runs handle on jobs, at most concurrency at once, until ctx ends; it then stops taking
	// jobs and returns when the jobs in hand are done (their own context ends after drain).
	consume(ctx context.Context, concurrency int, drain time.Duration, handle jobHandler)
	// ping reports whether the queue can take jobs now.
	ping(ctx context.Context) error
	close()
}

// maxJobPriority is the highest job priority (the work queue's x-max-priority).
const maxJobPriority = 9

// jobPriority is the priority of the job that is rank-th among its owner's unfinished jobs (1: the
// oldest): each user's first job comes before everyone's second, their second and third before the
// fourth to seventh, and so on in powers of two. So a user's backlog, however long, delays another
// user's first images by at most about one job (the one a worker is busy with), while the queue
// stays first-in first-out among equals and never starves anyone: a job's priority is fixed when it
// is published, and everything published after it with a higher one is another user's job of a
// lower rank.
func jobPriority(rank int64) uint8 {
	if rank < 1 {
		rank = 1
	}
	return uint8(max(0, maxJobPriority-(bits.Len64(uint64(rank))-1)))
}

// drainContext returns the context jobs run in: it ends drain after ctx does, so a shutdown first
// stops taking jobs and only later cancels the ones in hand.
func drainContext(ctx context.Context, drain time.Duration) (context.Context, context.CancelFunc) {
	jobCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(drain, cancel) })
	return jobCtx, func() { stop(); cancel() }
}

// errQueueDown is what publish says while the broker is unreachable.
var errQueueDown = errors.New("queue: broker unreachable")

// ---- RabbitMQ ----

// amqpQueue is a jobQueue on RabbitMQ: a durable queue of persistent messages, published with
// confirms; manual acks; delayed retries through a queue whose expired messages dead-letter back;
// and a dead-letter queue for jobs that failed for good. The connection is re-established by itself.
type amqpQueue struct {
	url  string
	name string // the work queue; name.retry and name.dead beside it
	log  *slog.Logger

	mu      sync.Mutex
	conn    *amqp.Connection // nil while disconnected
	pub     *amqp.Channel    // confirm-mode channel for publishing, shared by all publishers
	wake    chan struct{}    // closed and replaced at every (re)connection
	closed  bool
	done    chan struct{} // closed by close
	stopped chan struct{} // closed when maintain has returned (and closed its connection)
}

// newAMQPQueue starts connecting to url in the background and keeps the connection up until close.
// It does not wait for the broker: publishes fail (and the sweeper catches up) until it is there.
func newAMQPQueue(url, name string, log *slog.Logger) *amqpQueue {
	q := &amqpQueue{url: url, name: name, log: log, wake: make(chan struct{}), done: make(chan struct{}), stopped: make(chan struct{})}
	go func() { q.maintain(); close(q.stopped) }()
	return q
}

// maintain connects, declares the topology and waits for the connection to drop, then does it again,
// with growing pauses (up to 5 s) while the broker is away.
func (q *amqpQueue) maintain() {
	backoff := 100 * time.Millisecond
	for {
		q.mu.Lock()
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return
		}
		conn, pub, err := q.connect()
		if err != nil {
			q.log.Warn("broker unreachable", slog.Any("error", err), slog.Duration("retry_in", backoff))
			select {
			case <-q.done:
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		lost := conn.NotifyClose(make(chan *amqp.Error, 1))
		pubLost := pub.NotifyClose(make(chan *amqp.Error, 1))
		q.mu.Lock()
		q.conn, q.pub = conn, pub
		close(q.wake)
		q.wake = make(chan struct{})
		q.mu.Unlock()
		q.log.Info("broker connected")
		select {
		case err := <-lost:
			q.log.Warn("broker connection lost", slog.Any("error", err))
		case err := <-pubLost:
			q.log.Warn("broker channel lost", slog.Any("error", err))
		case <-q.done:
		}
		q.mu.Lock()
		q.conn, q.pub = nil, nil
		q.mu.Unlock()
		conn.Close()
	}
}

// connect dials, declares the three queues and opens the publishing channel in confirm mode.
func (q *amqpQueue) connect() (*amqp.Connection, *amqp.Channel, error) {
	conn, err := amqp.DialConfig(q.url, amqp.Config{Heartbeat: 10 * time.Second, Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = q.declare(ch)
	}
	if ae := (*amqp.Error)(nil); errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		// A work queue of an earlier version, without priorities: replace it. Its messages go with
		// it, and the sweeper publishes their jobs again from the rows (the database is the truth).
		q.log.Warn("replacing the work queue to give it priorities; the sweeper will publish its jobs again", slog.String("queue", q.name))
		if ch, err = conn.Channel(); err == nil {
			if _, err = ch.QueueDelete(q.name, false, false, false); err == nil {
				err = q.declare(ch)
			}
		}
	}
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, ch, nil
}

// declare makes the work queue, the retry queue (whose messages expire back into the work queue)
// and the dead-letter queue; all durable, so they survive a broker restart.
func (q *amqpQueue) declare(ch *amqp.Channel) error {
	if _, err := ch.QueueDeclare(q.name, true, false, false, false, amqp.Table{"x-max-priority": int32(maxJobPriority)}); err != nil {
		return err
	}
	if _, err := ch.QueueDeclare(q.name+".retry", true, false, false, false, amqp.Table{
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": q.name,
	}); err != nil {
		return err
	}
	_, err := ch.QueueDeclare(q.name+".dead", true, false, false, false, nil)
	return err
}

// current returns the live connection and publishing channel, or nils, and a channel closed at the
// next connection.
func (q *amqpQueue) current() (*amqp.Connection, *amqp.Channel, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.conn, q.pub, q.wake
}

// waitConnected waits up to timeout for a connection, so that jobs published right after start do
// not all fall to the sweeper. It reports whether the queue is connected.
func (q *amqpQueue) waitConnected(timeout time.Duration) bool {
	conn, _, wake := q.current()
	if conn != nil {
		return true
	}
	select {
	case <-wake:
		return true
	case <-time.After(timeout):
		return false
	}
}

func (q *amqpQueue) publish(ctx context.Context, id int64, priority uint8) error {
	return q.publishTo(ctx, q.name, id, priority, 0)
}

// publishTo sends id to queue with priority, persistent, expiring after delay when delay > 0, and
// waits for the broker's confirm (at most 5 s).
func (q *amqpQueue) publishTo(ctx context.Context, queue string, id int64, priority uint8, delay time.Duration) error {
	_, pub, _ := q.current()
	if pub == nil {
		return errQueueDown
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msg := amqp.Publishing{
		ContentType:  "text/plain",
		DeliveryMode: amqp.Persistent,
		MessageId:    strconv.FormatInt(id, 10),
		Priority:     priority,
		Timestamp:    time.Now(),
		Body:         []byte(strconv.FormatInt(id, 10)),
	}
	if delay > 0 {
		msg.Expiration = strconv.FormatInt(max(1, delay.Milliseconds()), 10)
	}
	dc, err := pub.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, msg)
	if err != nil {
		return fmt.Errorf("queue: publish: %w", err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("queue: publish: %w", err)
	}
	if !ok {
		return errors.New("queue: publish: the broker refused the message")
	}
	return nil
}

func (q *amqpQueue) ping(ctx context.Context) error {
	if conn, _, _ := q.current(); conn == nil || conn.IsClosed() {
		return errQueueDown
	}
	return nil
}

// close stops the connection's upkeep and waits until the connection is closed.
func (q *amqpQueue) close() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.done)
	}
	q.mu.Unlock()
	<-q.stopped
}

// consume takes deliveries with prefetch = concurrency, runs handle on each in its own goroutine, and
// acknowledges only after the handler (and so the database commit) is done. It reconnects whenever
// the connection drops. When ctx ends it cancels the consumer, waits for the jobs in hand, and
// returns.
func (q *amqpQueue) consume(ctx context.Context, concurrency int, drain time.Duration, handle jobHandler) {
	jobCtx, cancelJobs := drainContext(ctx, drain)
	defer cancelJobs()
	var inflight sync.WaitGroup
	defer inflight.Wait()
	for ctx.Err() == nil {
		conn, _, wake := q.current()
		if conn == nil {
			select {
			case <-ctx.Done():
			case <-wake:
			}
			continue
		}
		if err := q.consumeOnce(ctx, jobCtx, conn, concurrency, handle, &inflight); err != nil && ctx.Err() == nil {
			q.log.Warn("consumer stopped; reconnecting", slog.Any("error", err))
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// consumeOnce consumes on one channel of conn until the channel closes or ctx ends.
func (q *amqpQueue) consumeOnce(ctx, jobCtx context.Context, conn *amqp.Connection, concurrency int, handle jobHandler, inflight *sync.WaitGroup) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer func() {
		// Acks of the jobs in hand go over this channel: wait for them before closing it.
		inflight.Wait()
		ch.Close()
	}()
	if err := q.declare(ch); err != nil {
		return err
	}
	if err := ch.Qos(concurrency, 0, false); err != nil {
		return err
	}
	tag := fmt.Sprintf("imageapi-%d-%d", os.Getpid(), rand.Int64())
	deliveries, err := ch.ConsumeWithContext(context.WithoutCancel(ctx), q.name, tag, false, false, false, false, nil)
	if err != nil {
		return err
	}
	stopped := context.AfterFunc(ctx, func() { ch.Cancel(tag, false) })
	defer stopped()
	for d := range deliveries {
		inflight.Go(func() { q.handleDelivery(jobCtx, d, handle) })
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("delivery channel closed")
}

// handleDelivery handles one delivery and settles it: ack, retry later, dead-letter, or requeue.
func (q *amqpQueue) handleDelivery(ctx context.Context, d amqp.Delivery, handle jobHandler) {
	id, err := strconv.ParseInt(string(d.Body), 10, 64)
	if err != nil {
		q.log.Error("malformed job message; dead-lettering it", slog.String("body", string(d.Body)))
		d.Nack(false, false)
		return
	}
	outcome, delay := handle(ctx, id)
	// Settle even when ctx is cancelled: the broker must hear the answer.
	sctx := context.WithoutCancel(ctx)
	var err2 error
	switch outcome {
	case jobDone:
		err2 = d.Ack(false)
	case jobRetry:
		if err := q.publishTo(sctx, q.name+".retry", id, d.Priority, delay); err != nil {
			q.log.Warn("retry publish failed; requeueing at once", slog.Int64("image_id", id), slog.Any("error", err))
			err2 = d.Nack(false, true)
			break
		}
		err2 = d.Ack(false)
	case jobDead:
		if err := q.publishTo(sctx, q.name+".dead", id, 0, 0); err != nil {
			q.log.Warn("dead-letter publish failed", slog.Int64("image_id", id), slog.Any("error", err))
		}
		err2 = d.Ack(false)
	case jobAbandoned:
		err2 = d.Nack(false, true)
	}
	if err2 != nil {
		// The channel is gone: the broker redelivers the message, and the row decides what the
		// redelivery does (nothing, when the job finished).
		q.log.Warn("cannot settle job message; the broker will redeliver it", slog.Int64("image_id", id), slog.Any("error", err2))
	}
}

// ---- In-process ----

// memQueue is the jobQueue for a single process without RabbitMQ (BROKER_URL empty, mode all). Jobs
// are ids in memory, a FIFO per priority: a crash loses them, and the sweeper publishes them again
// from the rows, as it does for RabbitMQ. A queue of any length costs 8 bytes a job.
type memQueue struct {
	mu     sync.Mutex
	ids    [maxJobPriority + 1][]int64 // by priority
	signal chan struct{}               // has a token while a job waits
	log    *slog.Logger
}

func newMemQueue(log *slog.Logger) *memQueue {
	return &memQueue{signal: make(chan struct{}, 1), log: log}
}

func (q *memQueue) publish(_ context.Context, id int64, priority uint8) error {
	priority = min(priority, maxJobPriority)
	q.mu.Lock()
	q.ids[priority] = append(q.ids[priority], id)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
	return nil
}

// next pops the oldest job of the highest priority, or reports none.
func (q *memQueue) next() (int64, uint8, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for p := maxJobPriority; p >= 0; p-- {
		if len(q.ids[p]) == 0 {
			continue
		}
		id := q.ids[p][0]
		q.ids[p] = q.ids[p][1:]
		for _, rest := range q.ids {
			if len(rest) > 0 {
				select {
				case q.signal <- struct{}{}:
				default:
				}
				break
			}
		}
		return id, uint8(p), true
	}
	return 0, 0, false
}

func (q *memQueue) consume(ctx context.Context, concurrency int, drain time.Duration, handle jobHandler) {
	jobCtx, cancelJobs := drainContext(ctx, drain)
	defer cancelJobs()
	var workers sync.WaitGroup
	for range concurrency {
		workers.Go(func() {
			for {
				id, prio, ok := q.next()
				if !ok {
					select {
					case <-ctx.Done():
						return
					case <-q.signal:
						continue
					}
				}
				if ctx.Err() != nil {
					q.publish(ctx, id, prio) // not started: leave it for whoever runs next
					return
				}
				switch outcome, delay := handle(jobCtx, id); outcome {
				case jobRetry:
					time.AfterFunc(delay, func() { q.publish(context.Background(), id, prio) })
				case jobAbandoned:
					q.publish(context.Background(), id, prio)
				case jobDead:
					q.log.Warn("job failed for good", slog.Int64("image_id", id))
				}
			}
		})
	}
	workers.Wait()
}

func (q *memQueue) ping(context.Context) error { return nil }
func (q *memQueue) close()                     {}
