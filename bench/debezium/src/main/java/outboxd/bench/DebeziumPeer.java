package outboxd.bench;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.StringSerializer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.Header;
import io.debezium.engine.format.Json;
import io.debezium.engine.format.SimpleString;

/**
 * Benchmark peer for outboxd: Debezium's PostgreSQL connector (pgoutput) with the outbox EventRouter
 * SMT, in the embedded (async) engine, producing to Kafka with its own idempotent producer.
 *
 * <p>Per batch handed over by the engine: send every record, flush the producer, check every future,
 * and only then mark the records processed. Offsets (and so the replication slot's confirmed LSN)
 * therefore never run ahead of Kafka's acknowledgements: at-least-once, like outboxd.
 *
 * <p>Record shape: topic = --topic (route.topic.replacement), key = aggregateid, value = the payload
 * column's text (table.expand.json.payload=false; jsonb comes out in PostgreSQL's canonical jsonb
 * text), one header "id" = the row's uuid (EventRouter's default). Key and value use Debezium's
 * SimpleString format (Connect StringConverter), so neither is wrapped as a JSON string literal.
 *
 * <p>stdout carries exactly one line, "ready", once the connector task has started and its replication
 * slot is active (a walsender is streaming from it). Everything else goes to stderr.
 */
public final class DebeziumPeer {

    private static final Logger LOG = LoggerFactory.getLogger(DebeziumPeer.class);

    private DebeziumPeer() {
    }

    private static void usage(String problem) {
        System.err.println("DebeziumPeer: " + problem);
        System.err.println("usage: DebeziumPeer --pg-host H --pg-port P --db DB --user U --table SCHEMA.TABLE"
                + " --slot NAME --kafka BOOTSTRAP --topic TOPIC --offsets-dir DIR"
                + " [--password PW (default: $PGPASSWORD)] [--ready-timeout-s 120]"
                + " [--create-topic-partitions N (create --topic if missing, replication factor 1)]"
                + " [--dbz-prop k=v]... [--kafka-prop k=v]...");
        System.exit(2);
    }

    private static void createTopicIfMissing(String bootstrap, String topic, int partitions) throws Exception {
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap))) {
            admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
            LOG.info("created topic {} with {} partitions", topic, partitions);
        }
        catch (ExecutionException e) {
            if (!(e.getCause() instanceof TopicExistsException)) {
                throw e;
            }
        }
    }

    public static void main(String[] argv) throws Exception {
        // stdout is for the "ready" line alone: anything a library prints goes to stderr instead.
        final java.io.PrintStream stdout = System.out;
        System.setOut(System.err);
        Map<String, String> a = new LinkedHashMap<>();
        Properties dbzOverrides = new Properties();
        Properties kafkaOverrides = new Properties();
        for (int i = 0; i < argv.length; i++) {
            String k = argv[i];
            if (!k.startsWith("--") || i + 1 >= argv.length) {
                usage("bad argument: " + k);
            }
            String v = argv[++i];
            if (k.equals("--dbz-prop") || k.equals("--kafka-prop")) {
                int eq = v.indexOf('=');
                if (eq <= 0) {
                    usage(k + " wants k=v, got " + v);
                }
                (k.equals("--dbz-prop") ? dbzOverrides : kafkaOverrides).put(v.substring(0, eq), v.substring(eq + 1));
            }
            else {
                a.put(k.substring(2), v);
            }
        }
        for (String req : List.of("pg-host", "pg-port", "db", "user", "table", "slot", "kafka", "topic", "offsets-dir")) {
            if (!a.containsKey(req) || a.get(req).isEmpty()) {
                usage("missing --" + req);
            }
        }
        String table = a.get("table");
        if (!table.contains(".")) {
            usage("--table must be schema.table");
        }
        String password = a.getOrDefault("password", System.getenv().getOrDefault("PGPASSWORD", ""));
        String slot = a.get("slot");
        String topic = a.get("topic");
        long readyTimeoutMs = Long.parseLong(a.getOrDefault("ready-timeout-s", "120")) * 1000L;
        Path offsetsDir = Path.of(a.get("offsets-dir"));
        Files.createDirectories(offsetsDir);

        // ---- Kafka producer: outboxd's guarantees (acks=all, idempotence) and its linger.ms.
        Properties kp = new Properties();
        kp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("kafka"));
        kp.put(ProducerConfig.CLIENT_ID_CONFIG, "debezium-peer");
        kp.put(ProducerConfig.ACKS_CONFIG, "all");
        kp.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        kp.put(ProducerConfig.LINGER_MS_CONFIG, "2");
        // librdkafka's default batch.size (outboxd's producer) is 1,000,000 bytes; the Java default of
        // 16 KiB would cap each partition's request at ~70 of these records.
        kp.put(ProducerConfig.BATCH_SIZE_CONFIG, "1000000");
        kp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        kp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        kp.putAll(kafkaOverrides);
        if (a.containsKey("create-topic-partitions")) {
            createTopicIfMissing(a.get("kafka"), topic, Integer.parseInt(a.get("create-topic-partitions")));
        }
        KafkaProducer<String, String> producer = new KafkaProducer<>(kp);

        // ---- Debezium connector + engine.
        Properties c = new Properties();
        c.put("name", "outboxd-bench-debezium-peer");
        c.put("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        c.put("topic.prefix", "dbzpeer");
        c.put("database.hostname", a.get("pg-host"));
        c.put("database.port", a.get("pg-port"));
        c.put("database.user", a.get("user"));
        c.put("database.password", password);
        c.put("database.dbname", a.get("db"));
        c.put("plugin.name", "pgoutput");                  // the default is decoderbufs
        c.put("slot.name", slot);
        c.put("publication.name", slot);                    // one name for slot and publication
        c.put("publication.autocreate.mode", "filtered");  // the default is all_tables
        c.put("table.include.list", table);
        c.put("snapshot.mode", "no_data");                 // stream from the slot's creation on
        // An outbox only inserts (EventRouter drops the rest anyway); with this Debezium also creates
        // the publication WITH (publish = 'insert'), so pgoutput doesn't even send updates/deletes.
        c.put("skipped.operations", "u,d,t");
        // Debezium 3.x adds four "__debezium.context.*" headers (~200 bytes) to every record by
        // default; outboxd sends one header, and so does this peer: EventRouter's "id".
        c.put("extended.headers.enabled", "false");
        // Engine batching: up to 2048 records a batch, 16384 queued between the WAL reader and the
        // batch consumer, and at most 10 ms of waiting when the queue is empty (default 500 ms).
        c.put("max.batch.size", "2048");
        c.put("max.queue.size", "16384");
        c.put("poll.interval.ms", "10");
        c.put("offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
        c.put("offset.storage.file.filename", offsetsDir.resolve("offsets.dat").toString());
        c.put("offset.flush.interval.ms", "1000");
        // Outbox event router: fixed topic, key = aggregateid, value = payload column text.
        c.put("transforms", "outbox");
        c.put("transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter");
        c.put("transforms.outbox.route.topic.replacement", topic);
        c.put("transforms.outbox.table.field.event.key", "aggregateid");
        c.put("transforms.outbox.table.expand.json.payload", "false");
        // Key and value: SimpleString format = Connect StringConverter. Headers: the Json header
        // format with its converter swapped for StringConverter, so the "id" header is the bare uuid.
        c.put("header.converter.class", "org.apache.kafka.connect.storage.StringConverter");
        c.putAll(dbzOverrides);
        for (String name : c.stringPropertyNames()) {
            LOG.info("debezium {} = {}", name, name.contains("password") ? "****" : c.getProperty(name));
        }

        AtomicLong produced = new AtomicLong();
        AtomicLong batches = new AtomicLong();
        AtomicLong skipped = new AtomicLong();
        CountDownLatch taskStarted = new CountDownLatch(1);
        CountDownLatch finished = new CountDownLatch(1);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        AtomicBoolean ok = new AtomicBoolean(true);

        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine
                .create(SimpleString.class, SimpleString.class, Json.class)
                .using(c)
                .using(new DebeziumEngine.ConnectorCallback() {
                    @Override
                    public void taskStarted() {
                        LOG.info("connector task started");
                        taskStarted.countDown();
                    }

                    @Override
                    public void taskStopped() {
                        LOG.info("connector task stopped");
                    }
                })
                .using((success, message, error) -> {
                    ok.set(success);
                    if (error != null) {
                        failure.set(error);
                    }
                    if (success) {
                        LOG.info("engine finished: {}", message);
                    }
                    else {
                        LOG.error("engine failed: {}", message, error);
                    }
                    finished.countDown();
                })
                .notifying((List<ChangeEvent<String, String>> records,
                            DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer) -> {
                    List<Future<RecordMetadata>> futures = new ArrayList<>(records.size());
                    for (ChangeEvent<String, String> r : records) {
                        if (!topic.equals(r.destination())) {
                            // Not an outbox event (nothing else is configured to appear): pass it by.
                            if (skipped.getAndIncrement() == 0) {
                                LOG.warn("skipping record for destination {}", r.destination());
                            }
                            continue;
                        }
                        RecordHeaders headers = new RecordHeaders();
                        for (Header<String> h : r.<String> headers()) {
                            headers.add(h.getKey(), h.getValue() == null ? null : h.getValue().getBytes(StandardCharsets.UTF_8));
                        }
                        futures.add(producer.send(new ProducerRecord<>(topic, null, r.key(), r.value(), headers)));
                    }
                    // Don't sit out linger.ms on the batch's tail: this thread waits for all of it anyway.
                    producer.flush();
                    for (Future<RecordMetadata> f : futures) {
                        try {
                            f.get();
                        }
                        catch (ExecutionException e) {
                            // Nothing of this batch is marked processed: after a restart it is sent again.
                            throw new RuntimeException("Kafka delivery failed", e.getCause());
                        }
                    }
                    for (ChangeEvent<String, String> r : records) {
                        committer.markProcessed(r);
                    }
                    committer.markBatchFinished();
                    produced.addAndGet(futures.size());
                    batches.incrementAndGet();
                })
                .build();

        ExecutorService executor = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "debezium-engine");
            t.setDaemon(false);
            return t;
        });
        AtomicBoolean closed = new AtomicBoolean();
        Runnable closeAll = () -> {
            if (!closed.compareAndSet(false, true)) {
                return;
            }
            try {
                if (finished.getCount() > 0) {   // a failed engine has shut itself down already
                    LOG.info("stopping engine");
                    engine.close();
                }
            }
            catch (IOException | RuntimeException e) {
                LOG.warn("engine close failed", e);
            }
            executor.shutdown();
            try {
                executor.awaitTermination(30, TimeUnit.SECONDS);
            }
            catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            producer.close(java.time.Duration.ofSeconds(10));
            LOG.info("stopped: {} records produced in {} batches", produced.get(), batches.get());
        };
        Runtime.getRuntime().addShutdownHook(new Thread(closeAll, "shutdown"));
        executor.execute(engine);

        // ---- Readiness: task started, then the slot exists and is held by a streaming walsender.
        long deadline = System.currentTimeMillis() + readyTimeoutMs;
        while (!taskStarted.await(100, TimeUnit.MILLISECONDS)) {
            if (finished.getCount() == 0) {
                LOG.error("engine stopped before its task started");
                System.exit(1);
            }
            if (System.currentTimeMillis() > deadline) {
                LOG.error("connector task did not start within {} ms", readyTimeoutMs);
                System.exit(1);
            }
        }
        String url = "jdbc:postgresql://" + a.get("pg-host") + ":" + a.get("pg-port") + "/" + a.get("db");
        Properties jp = new Properties();
        jp.put("user", a.get("user"));
        if (!password.isEmpty()) {
            jp.put("password", password);
        }
        jp.put("ApplicationName", "debezium-peer-readiness");
        try (Connection conn = DriverManager.getConnection(url, jp);
             PreparedStatement st = conn.prepareStatement(
                     "SELECT s.active FROM pg_replication_slots s JOIN pg_publication p ON p.pubname = ?"
                             + " WHERE s.slot_name = ? AND s.database = current_database() AND s.plugin = 'pgoutput'")) {
            st.setString(1, slot);
            st.setString(2, slot);
            while (true) {
                try (ResultSet rs = st.executeQuery()) {
                    if (rs.next() && rs.getBoolean(1)) {
                        break;
                    }
                }
                if (finished.getCount() == 0) {
                    LOG.error("engine stopped before the slot became active");
                    System.exit(1);
                }
                if (System.currentTimeMillis() > deadline) {
                    LOG.error("slot {} not active within {} ms", slot, readyTimeoutMs);
                    System.exit(1);
                }
                Thread.sleep(50);
            }
        }
        catch (SQLException e) {
            LOG.error("readiness check failed", e);
            System.exit(1);
        }
        LOG.info("streaming from slot {} (publication {}) to topic {}", slot, slot, topic);
        stdout.println("ready");
        stdout.flush();

        // ---- Run until SIGTERM (shutdown hook) or engine failure; a progress line every 10 s.
        long last = -1;
        while (!finished.await(10, TimeUnit.SECONDS)) {
            long n = produced.get();
            if (n != last) {
                LOG.info("progress: {} records produced in {} batches", n, batches.get());
                last = n;
            }
        }
        if (!ok.get() || failure.get() != null) {
            System.exit(1);   // runs the shutdown hook: producer closed
        }
        System.exit(0);
    }
}
