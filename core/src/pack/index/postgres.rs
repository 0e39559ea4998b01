//! The index of several hosts: PostgreSQL (`[PieceStore.Index] Url = "postgres://…"`).
//!
//! Every node of a store opens the same database; each shard's index is a set of rows keyed
//! by the shard's name (`<bucket label>#<shard>`), so one database serves many stores. A
//! write group's changes go to the server as one call of the `piecestore_apply` function
//! (created at open, in PL/pgSQL): one round trip and one transaction per group, whatever its
//! size. The function applies each change as the embedded index does (first write wins for a
//! new key, newer sequence numbers win, compare-and-swap moves, intents owned by their
//! writer), under row locks, so that nodes racing one key agree on one winner.
//!
//! Which nodes live, and the shard's leases (one compaction, one recovery at a time, and a
//! rebuild alone), are PostgreSQL advisory locks held by a connection of each node
//! ([`PgMember`]): when a node dies, its connection closes and its locks go with it.
//!
//! The client is `tokio-postgres`, on a small runtime of its own (the index is called from
//! blocking code and from the store's runtime alike; a query is handed to this runtime and
//! waited for). A pool of connections pipelines concurrent queries.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, Statement};

use super::{Change, Intent, OwnedIntent, PackId, PackIndex, PackInfo, PackState, Slot, Snapshot};
use crate::error::{Error, Result};

/// The layout of the tables and function this build writes and reads.
const LAYOUT: u64 = 1;

/// How long one call may take before the index reports the server unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Connections per shard index (concurrent queries pipeline on each).
const POOL: usize = 4;

/// The tables, and the function that applies a batch of changes in one round trip.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS piecestore_pieces (
    ix text NOT NULL, key text COLLATE "C" NOT NULL, slot bytea NOT NULL,
    seq bigint NOT NULL, pack bytea, len bigint NOT NULL, PRIMARY KEY (ix, key));
CREATE TABLE IF NOT EXISTS piecestore_packs (
    ix text NOT NULL, id bytea NOT NULL, size bigint NOT NULL, payload bigint NOT NULL,
    live_bytes bigint NOT NULL, live_count bigint NOT NULL, records bigint NOT NULL,
    min_seq bigint NOT NULL, state smallint NOT NULL, since_ms bigint NOT NULL,
    PRIMARY KEY (ix, id));
CREATE TABLE IF NOT EXISTS piecestore_intents (
    ix text NOT NULL, key text COLLATE "C" NOT NULL, intent bytea NOT NULL,
    owner bigint NOT NULL, PRIMARY KEY (ix, key));
CREATE TABLE IF NOT EXISTS piecestore_meta (
    ix text NOT NULL, name text NOT NULL, value bigint NOT NULL, PRIMARY KEY (ix, name));
CREATE TABLE IF NOT EXISTS piecestore_writers (
    ix text NOT NULL, id bigint NOT NULL, PRIMARY KEY (ix, id));

-- Moves live bytes into (+) or out of (-) packs: one update per pack, in pack order (two
-- transactions never lock two packs in opposite orders).
CREATE OR REPLACE FUNCTION piecestore_account_v1(p_ix text, p_packs bytea[], p_bytes bigint[], p_counts bigint[])
RETURNS void LANGUAGE sql AS $$
    UPDATE piecestore_packs p
       SET live_bytes = greatest(p.live_bytes + d.b, 0), live_count = greatest(p.live_count + d.c, 0)
      FROM (SELECT id, sum(b)::bigint AS b, sum(c)::bigint AS c
              FROM unnest(p_packs, p_bytes, p_counts) AS u(id, b, c)
             WHERE id IS NOT NULL GROUP BY id ORDER BY id) d
     WHERE p.ix = p_ix AND p.id = d.id
$$;

-- A bucket's write group (its new pack, the sequence counter, new keys' pieces in that pack)
-- as arrays rather than jsonb: one statement, the pack's row going in with the live bytes and
-- count of the pieces that took (so no second statement updates it), with no jsonb document
-- to parse and hex to decode per change (a group of 16 pieces: about a fifth less of the
-- server's time than as JSON). piecestore_apply_v1 below hands it the write groups that come
-- as JSON (from older nodes). Returns whether the pack's row is new, then for each key
-- whether its piece took (inserted, or the key holds these bytes already).
CREATE OR REPLACE FUNCTION piecestore_group_v1(p_ix text, p_pack bytea, p_size bigint,
    p_payload bigint, p_records bigint, p_min_seq bigint, p_state smallint, p_since bigint,
    p_bump bigint, p_keys text[], p_slots bytea[], p_seqs bigint[], p_lens bigint[],
    p_durable boolean)
RETURNS boolean[] LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    out boolean[];
    new_pack boolean;
    a_bytes bigint[];
    max_seq bigint;
    n integer;
BEGIN
    IF NOT p_durable THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    WITH x AS (
        SELECT * FROM unnest(p_keys, p_slots, p_seqs, p_lens) WITH ORDINALITY
            AS x(key, slot, seq, len, k)
    ), ins AS (
        INSERT INTO piecestore_pieces
        SELECT p_ix, x.key, x.slot, x.seq, p_pack, x.len FROM x
         WHERE NOT EXISTS (SELECT 1 FROM piecestore_intents i
                           WHERE i.ix = p_ix AND i.key = x.key)
        ON CONFLICT DO NOTHING
        RETURNING key, len, seq
    ), pk AS (
        INSERT INTO piecestore_packs
        SELECT p_ix, p_pack, p_size, p_payload, (SELECT coalesce(sum(len), 0) FROM ins),
               (SELECT count(*) FROM ins), p_records, p_min_seq, p_state, p_since
        ON CONFLICT DO NOTHING
        RETURNING id
    )
    SELECT (SELECT array_agg(EXISTS (SELECT 1 FROM ins WHERE ins.key = x.key)
                   OR EXISTS (SELECT 1 FROM piecestore_pieces p WHERE p.ix = p_ix
                              AND p.key = x.key AND p.slot = x.slot) ORDER BY x.k) FROM x),
           EXISTS (SELECT 1 FROM pk),
           (SELECT coalesce(array_agg(len), '{}') FROM ins),
           greatest((SELECT max(seq) FROM ins), p_bump, 0)
      INTO out, new_pack, a_bytes, max_seq;
    n := cardinality(a_bytes);
    IF NOT new_pack AND n > 0 THEN
        -- The pack was recorded already (a group sent again): its pieces that took are
        -- counted into it as usual.
        PERFORM piecestore_account_v1(p_ix, array_fill(p_pack, ARRAY[n]), a_bytes,
                                      array_fill(1::bigint, ARRAY[n]));
    END IF;
    IF p_durable AND max_seq > 0 THEN
        INSERT INTO piecestore_meta VALUES (p_ix, 'max_seq', max_seq)
        ON CONFLICT (ix, name) DO UPDATE SET value = greatest(piecestore_meta.value, EXCLUDED.value);
    END IF;
    RETURN new_pack || coalesce(out, '{}');
END
$$;

-- Its statements are planned once per session, not per call: with the default plan cache
-- mode the server planned the one-statement path again for every batch (a batch is a
-- constant jsonb, which a custom plan folds in), about half of its time under three nodes.
CREATE OR REPLACE FUNCTION piecestore_apply_v1(p_ix text, p_changes jsonb, p_durable boolean)
RETURNS boolean[] LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    c jsonb;
    t text;
    took boolean;
    out boolean[] := '{}';
    max_seq bigint := 0;
    r record;
    a_pack bytea[] := '{}';
    a_bytes bigint[] := '{}';
    a_count bigint[] := '{}';
    n integer;
    group_took boolean[];
BEGIN
    IF NOT p_durable THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- A bucket's write group (its new pack first, then counter raises and new keys' pieces in
    -- that pack): the group function's one statement, its answers put back one a change.
    -- (Nodes send such groups to piecestore_group_v1 themselves; older ones send them here.)
    IF p_changes->0->>'t' = 'add_pack'
       AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_changes) WITH ORDINALITY AS j(e, k)
                       WHERE k > 1 AND e->>'t' IS DISTINCT FROM 'bump_seq'
                         AND NOT (e->>'t' = 'insert'
                                  AND e->>'pack' IS NOT DISTINCT FROM p_changes->0->>'id'))
    THEN
        c := p_changes->0;
        group_took := piecestore_group_v1(p_ix, decode(c->>'id', 'hex'), (c->>'size')::bigint,
            (c->>'payload')::bigint, (c->>'records')::bigint, (c->>'min_seq')::bigint,
            (c->>'state')::smallint, (c->>'since')::bigint,
            (SELECT coalesce(max((e->>'seq')::bigint), 0) FROM jsonb_array_elements(p_changes) e
              WHERE e->>'t' = 'bump_seq'),
            ARRAY(SELECT e->>'key' FROM jsonb_array_elements(p_changes) WITH ORDINALITY j(e, k)
                   WHERE e->>'t' = 'insert' ORDER BY k),
            ARRAY(SELECT decode(e->>'slot', 'hex') FROM jsonb_array_elements(p_changes)
                         WITH ORDINALITY j(e, k) WHERE e->>'t' = 'insert' ORDER BY k),
            ARRAY(SELECT (e->>'seq')::bigint FROM jsonb_array_elements(p_changes)
                         WITH ORDINALITY j(e, k) WHERE e->>'t' = 'insert' ORDER BY k),
            ARRAY(SELECT (e->>'len')::bigint FROM jsonb_array_elements(p_changes)
                         WITH ORDINALITY j(e, k) WHERE e->>'t' = 'insert' ORDER BY k),
            p_durable);
        SELECT array_agg(CASE WHEN y.k = 1 THEN group_took[1]
                              WHEN y.t = 'insert' THEN group_took[1 + y.n]
                              ELSE true END ORDER BY y.k)
          INTO out
          FROM (SELECT k, e->>'t' AS t,
                       count(*) FILTER (WHERE e->>'t' = 'insert') OVER (ORDER BY k) AS n
                  FROM jsonb_array_elements(p_changes) WITH ORDINALITY j(e, k)) y;
        RETURN out;
    END IF;
    -- A write group of new keys (its pack, its sequence number, inserts): set-based, a few
    -- statements whatever the group's size.
    IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_changes) e
                   WHERE e->>'t' NOT IN ('add_pack', 'bump_seq', 'insert'))
       AND (SELECT count(*) FROM jsonb_array_elements(p_changes) e WHERE e->>'t' = 'add_pack') <= 1
    THEN
        took := true;
        SELECT e INTO c FROM jsonb_array_elements(p_changes) e WHERE e->>'t' = 'add_pack';
        IF c IS NOT NULL THEN
            INSERT INTO piecestore_packs VALUES (p_ix, decode(c->>'id', 'hex'),
                (c->>'size')::bigint, (c->>'payload')::bigint, 0, 0, (c->>'records')::bigint,
                (c->>'min_seq')::bigint, (c->>'state')::smallint, (c->>'since')::bigint)
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS n = ROW_COUNT;
            took := n > 0;
        END IF;
        WITH x AS (
            SELECT e, k FROM jsonb_array_elements(p_changes) WITH ORDINALITY AS j(e, k)
        ), ins AS (
            INSERT INTO piecestore_pieces
            SELECT p_ix, x.e->>'key', decode(x.e->>'slot', 'hex'), (x.e->>'seq')::bigint,
                   decode(x.e->>'pack', 'hex'), (x.e->>'len')::bigint
              FROM x
             WHERE x.e->>'t' = 'insert'
               AND NOT EXISTS (SELECT 1 FROM piecestore_intents i
                               WHERE i.ix = p_ix AND i.key = x.e->>'key')
            ON CONFLICT DO NOTHING
            RETURNING key, pack, len, seq
        )
        SELECT
            (SELECT array_agg(CASE x.e->>'t'
                    WHEN 'insert' THEN
                        EXISTS (SELECT 1 FROM ins WHERE ins.key = x.e->>'key')
                        OR EXISTS (SELECT 1 FROM piecestore_pieces p WHERE p.ix = p_ix
                                   AND p.key = x.e->>'key' AND p.slot = decode(x.e->>'slot', 'hex'))
                    WHEN 'add_pack' THEN took
                    ELSE true END ORDER BY x.k) FROM x),
            (SELECT coalesce(array_agg(pack), '{}') FROM ins),
            (SELECT coalesce(array_agg(len), '{}') FROM ins),
            (SELECT coalesce(array_agg(1::bigint), '{}') FROM ins),
            greatest((SELECT max(seq) FROM ins),
                     (SELECT max((e->>'seq')::bigint) FROM x WHERE e->>'t' = 'bump_seq'), 0)
          INTO out, a_pack, a_bytes, a_count, max_seq;
        IF cardinality(a_pack) > 0 THEN
            PERFORM piecestore_account_v1(p_ix, a_pack, a_bytes, a_count);
        END IF;
        IF p_durable AND max_seq > 0 THEN
            INSERT INTO piecestore_meta VALUES (p_ix, 'max_seq', max_seq)
            ON CONFLICT (ix, name) DO UPDATE SET value = greatest(piecestore_meta.value, EXCLUDED.value);
        END IF;
        RETURN coalesce(out, '{}');
    END IF;
    FOR c IN SELECT * FROM jsonb_array_elements(p_changes) LOOP
        t := c->>'t';
        took := false;
        IF t IN ('clear', 'remove_pack') AND cardinality(a_pack) > 0 THEN
            PERFORM piecestore_account_v1(p_ix, a_pack, a_bytes, a_count);
            a_pack := '{}'; a_bytes := '{}'; a_count := '{}';
        END IF;
        IF t = 'clear' THEN
            DELETE FROM piecestore_pieces WHERE ix = p_ix;
            DELETE FROM piecestore_packs WHERE ix = p_ix;
            IF (c->>'intents')::boolean THEN
                DELETE FROM piecestore_intents WHERE ix = p_ix;
            END IF;
            took := true;
        ELSIF t = 'add_pack' THEN
            INSERT INTO piecestore_packs VALUES (p_ix, decode(c->>'id', 'hex'),
                (c->>'size')::bigint, (c->>'payload')::bigint, 0, 0, (c->>'records')::bigint,
                (c->>'min_seq')::bigint, (c->>'state')::smallint, (c->>'since')::bigint)
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS n = ROW_COUNT;
            took := n > 0;
        ELSIF t = 'pack_grew' THEN
            UPDATE piecestore_packs SET size = (c->>'size')::bigint,
                payload = (c->>'payload')::bigint, records = (c->>'records')::bigint,
                min_seq = (c->>'min_seq')::bigint
             WHERE ix = p_ix AND id = decode(c->>'id', 'hex') AND size < (c->>'size')::bigint;
            took := FOUND;
        ELSIF t = 'seal' THEN
            UPDATE piecestore_packs SET state = 0, size = (c->>'size')::bigint
             WHERE ix = p_ix AND id = decode(c->>'id', 'hex') AND state = 1;
            took := FOUND;
        ELSIF t = 'doom' THEN
            UPDATE piecestore_packs SET state = 2, since_ms = (c->>'since')::bigint
             WHERE ix = p_ix AND id = decode(c->>'id', 'hex');
            took := FOUND;
        ELSIF t = 'remove_pack' THEN
            DELETE FROM piecestore_packs WHERE ix = p_ix AND id = decode(c->>'id', 'hex');
            took := FOUND;
        ELSIF t = 'insert' THEN
            INSERT INTO piecestore_pieces
            SELECT p_ix, c->>'key', decode(c->>'slot', 'hex'), (c->>'seq')::bigint,
                   decode(c->>'pack', 'hex'), (c->>'len')::bigint
             WHERE NOT EXISTS (SELECT 1 FROM piecestore_intents WHERE ix = p_ix AND key = c->>'key')
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n > 0 THEN
                took := true;
                a_pack := a_pack || decode(c->>'pack', 'hex');
                a_bytes := a_bytes || (c->>'len')::bigint;
                a_count := a_count || 1::bigint;
                max_seq := greatest(max_seq, (c->>'seq')::bigint);
            ELSE
                took := EXISTS (SELECT 1 FROM piecestore_pieces WHERE ix = p_ix
                                AND key = c->>'key' AND slot = decode(c->>'slot', 'hex'));
            END IF;
        ELSIF t = 'put' THEN
            LOOP
                SELECT seq, pack, len INTO r FROM piecestore_pieces
                 WHERE ix = p_ix AND key = c->>'key' FOR UPDATE;
                IF FOUND THEN
                    IF r.seq >= (c->>'seq')::bigint THEN
                        took := false;
                    ELSE
                        UPDATE piecestore_pieces SET slot = decode(c->>'slot', 'hex'),
                            seq = (c->>'seq')::bigint, pack = decode(c->>'pack', 'hex'),
                            len = (c->>'len')::bigint
                         WHERE ix = p_ix AND key = c->>'key';
                        a_pack := a_pack || r.pack || decode(c->>'pack', 'hex');
                        a_bytes := a_bytes || (-r.len) || (c->>'len')::bigint;
                        a_count := a_count || (-1)::bigint || 1::bigint;
                        took := true;
                    END IF;
                    EXIT;
                END IF;
                INSERT INTO piecestore_pieces VALUES (p_ix, c->>'key', decode(c->>'slot', 'hex'),
                    (c->>'seq')::bigint, decode(c->>'pack', 'hex'), (c->>'len')::bigint)
                ON CONFLICT DO NOTHING;
                GET DIAGNOSTICS n = ROW_COUNT;
                IF n > 0 THEN
                    a_pack := a_pack || decode(c->>'pack', 'hex');
                    a_bytes := a_bytes || (c->>'len')::bigint;
                    a_count := a_count || 1::bigint;
                    took := true;
                    EXIT;
                END IF;
            END LOOP;
            IF took THEN
                max_seq := greatest(max_seq, (c->>'seq')::bigint);
            END IF;
        ELSIF t = 'delete' THEN
            DELETE FROM piecestore_pieces WHERE ix = p_ix AND key = c->>'key'
               AND seq <= (c->>'upto')::bigint
            RETURNING pack, len INTO r;
            IF FOUND THEN
                a_pack := a_pack || r.pack;
                a_bytes := a_bytes || (-r.len);
                a_count := a_count || (-1)::bigint;
                took := true;
            END IF;
        ELSIF t = 'move' THEN
            UPDATE piecestore_pieces SET slot = decode(c->>'to', 'hex'),
                pack = decode(c->>'to_pack', 'hex')
             WHERE ix = p_ix AND key = c->>'key' AND slot = decode(c->>'from', 'hex');
            IF FOUND THEN
                a_pack := a_pack || decode(c->>'from_pack', 'hex') || decode(c->>'to_pack', 'hex');
                a_bytes := a_bytes || (-(c->>'len')::bigint) || (c->>'len')::bigint;
                a_count := a_count || (-1)::bigint || 1::bigint;
                took := true;
            END IF;
        ELSIF t = 'set_intent' THEN
            INSERT INTO piecestore_intents VALUES (p_ix, c->>'key', decode(c->>'intent', 'hex'),
                (c->>'owner')::bigint)
            ON CONFLICT (ix, key) DO UPDATE SET intent = EXCLUDED.intent
             WHERE piecestore_intents.owner = EXCLUDED.owner;
            GET DIAGNOSTICS n = ROW_COUNT;
            took := n > 0;
            IF took THEN
                max_seq := greatest(max_seq, (c->>'seq')::bigint);
            END IF;
        ELSIF t = 'take_intent' THEN
            UPDATE piecestore_intents SET owner = (c->>'to')::bigint
             WHERE ix = p_ix AND key = c->>'key' AND owner = (c->>'from')::bigint;
            took := FOUND;
        ELSIF t = 'clear_intent' THEN
            DELETE FROM piecestore_intents
             WHERE ix = p_ix AND key = c->>'key' AND owner = (c->>'owner')::bigint;
            took := FOUND;
        ELSIF t = 'bump_seq' THEN
            max_seq := greatest(max_seq, (c->>'seq')::bigint);
            took := true;
        ELSIF t = 'set_meta' THEN
            INSERT INTO piecestore_meta VALUES (p_ix, c->>'name', (c->>'value')::bigint)
            ON CONFLICT (ix, name) DO UPDATE SET value = EXCLUDED.value;
            took := true;
        ELSE
            RAISE EXCEPTION 'piecestore_apply: unknown change %', t;
        END IF;
        out := out || took;
    END LOOP;
    IF cardinality(a_pack) > 0 THEN
        PERFORM piecestore_account_v1(p_ix, a_pack, a_bytes, a_count);
    END IF;
    IF max_seq > 0 THEN
        -- Only ever raised; a durable commit records it (lazy ones leave it to the next).
        IF p_durable THEN
            INSERT INTO piecestore_meta VALUES (p_ix, 'max_seq', max_seq)
            ON CONFLICT (ix, name) DO UPDATE SET value = greatest(piecestore_meta.value, EXCLUDED.value);
        END IF;
    END IF;
    RETURN out;
END
$$;
"#;

/// The runtime the client runs on (one per forked generation of the process: a forked child
/// has none of its parent's threads). One thread: it only moves the connections' bytes and
/// runs the synchronous calls' futures, while the servers' round trips are what those wait
/// for; a second thread was one more to wake and schedule on every round trip, which cost 3
/// nodes × 16 puts in flight on one 2-core machine about 5 % of their puts/s
/// (benches/RESULTS.md).
fn runtime() -> Result<tokio::runtime::Handle> {
    static RT: Mutex<Option<(u64, tokio::runtime::Handle)>> = Mutex::new(None);
    let generation = crate::runtime::fork_generation();
    let mut slot = RT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((g, h)) = slot.as_ref()
        && *g == generation
    {
        return Ok(h.clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("piecestore-pg")
        .on_thread_start(crate::runtime::block_sigpipe)
        .enable_all()
        .build()
        .map_err(|e| Error::config(format!("cannot start the PostgreSQL client: {e}")))?;
    let handle = rt.handle().clone();
    // Lives as long as the process (or its forked generation).
    std::mem::forget(rt);
    *slot = Some((generation, handle.clone()));
    Ok(handle)
}

/// Runs `fut` on the client's runtime and waits for it from any thread (not one of the
/// client runtime's own).
fn block<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv_timeout(CALL_TIMEOUT).ok()
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // A password may also be a query parameter.
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "postgres://(unparsable URL)".into(),
    }
}

/// One connection and its prepared statements.
struct Conn {
    client: Client,
    get: Statement,
    lookup: Statement,
    apply: Statement,
    group: Statement,
}

/// A database of pack indexes: its connection settings and a pool.
pub(crate) struct Db {
    url: crate::config::Secret,
    shown: String,
    rt: tokio::runtime::Handle,
    pool: Vec<Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("at", &self.shown).finish()
    }
}

/// What went wrong: the server's message (a `DbError`), where the client's says only "db
/// error". Neither holds the password.
fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

fn pg_err(shown: &str, e: &tokio_postgres::Error) -> Error {
    let detail = detail(e);
    Error::Backend {
        op: "index",
        key: None,
        backend: shown.to_string(),
        message: format!("the PostgreSQL index: {detail}"),
        retryable: e.is_closed() || e.as_db_error().is_none(),
    }
}

impl Db {
    /// Connects to the database at `url` and creates the tables and functions if missing.
    pub(crate) fn open(url: &crate::config::Secret) -> Result<Arc<Db>> {
        let shown = redact(url.expose());
        let config: tokio_postgres::Config = url.expose().parse().map_err(|e| {
            Error::config(format!("[PieceStore.Index] Url {shown} is not valid: {e}"))
        })?;
        if matches!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        ) {
            return Err(Error::config(format!(
                "[PieceStore.Index] Url {shown}: sslmode=require is not supported by this \
                 build (connect over a private network, a unix socket, or an SSH/TLS tunnel)"
            )));
        }
        let db = Arc::new(Db {
            url: url.clone(),
            shown,
            rt: runtime()?,
            pool: (0..POOL).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        });
        let client = db.connect_raw()?;
        let schema =
            format!("BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;");
        let shown = db.shown.clone();
        db.call(async move { client.batch_execute(&schema).await })?
            .map_err(|e| pg_err(&shown, &e))?;
        Ok(db)
    }

    /// Runs `fut` on the client's runtime.
    fn call<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
        block(&self.rt, fut).ok_or_else(|| Error::Backend {
            op: "index",
            key: None,
            backend: self.shown.clone(),
            message: format!(
                "the PostgreSQL index did not answer in {} s",
                CALL_TIMEOUT.as_secs()
            ),
            retryable: true,
        })
    }

    /// A new connection of its own (not pooled).
    fn connect_raw(&self) -> Result<Client> {
        let url = self.url.clone();
        let shown = self.shown.clone();
        self.call(async move {
            let (client, connection) = tokio_postgres::connect(url.expose(), NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "a PostgreSQL index connection closed");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        })?
        .map_err(|e| {
            let mut err = pg_err(&shown, &e);
            if let Error::Backend { message, .. } = &mut err {
                *message = format!("cannot connect to the PostgreSQL index: {}", detail(&e));
            }
            err
        })
    }

    /// A pooled connection (reconnected if it closed).
    fn conn(&self) -> Result<Arc<Conn>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let mut slot = self.pool[i].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref()
            && !c.client.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        let client = self.connect_raw()?;
        let shown = self.shown.clone();
        let conn = self
            .call(async move {
                let get = client
                    .prepare("SELECT slot FROM piecestore_pieces WHERE ix = $1 AND key = $2")
                    .await?;
                let lookup = client
                    .prepare(
                        "SELECT (SELECT slot FROM piecestore_pieces WHERE ix = $1 AND key = $2), \
                         (SELECT intent FROM piecestore_intents WHERE ix = $1 AND key = $2), \
                         (SELECT owner FROM piecestore_intents WHERE ix = $1 AND key = $2)",
                    )
                    .await?;
                let apply = client
                    .prepare("SELECT piecestore_apply_v1($1, $2::text::jsonb, $3)")
                    .await?;
                let group = client
                    .prepare(
                        "SELECT piecestore_group_v1($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                         $11, $12, $13, $14)",
                    )
                    .await?;
                Ok::<_, tokio_postgres::Error>(Conn {
                    client,
                    get,
                    lookup,
                    apply,
                    group,
                })
            })?
            .map_err(|e| pg_err(&shown, &e))?;
        let conn = Arc::new(conn);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Runs a query on a pooled connection.
    fn query(
        &self,
        sql: impl Into<String>,
        params: Vec<Param>,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let sql = sql.into();
        let conn = self.conn()?;
        let shown = self.shown.clone();
        self.call(async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(Param::as_sql).collect();
            conn.client.query(sql.as_str(), &refs).await
        })?
        .map_err(|e| pg_err(&shown, &e))
    }
}

/// The advisory lock that serializes schema creation.
const SCHEMA_LOCK: i64 = 0x5049_4543_4553_0001;

/// A query parameter (owned, so the query can run on the client's runtime).
enum Param {
    Text(String),
    Int(i64),
    I32(i32),
    Bytes(Vec<u8>),
}

impl Param {
    fn as_sql(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Param::Text(s) => s,
            Param::Int(i) => i,
            Param::I32(i) => i,
            Param::Bytes(b) => b,
        }
    }
}

/// One shard's index in PostgreSQL.
pub struct PgIndex {
    db: Arc<Db>,
    ix: String,
    label: String,
}

impl fmt::Debug for PgIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgIndex").field("at", &self.label).finish()
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn pack_hex(id: PackId) -> String {
    hex(&id.to_be_bytes())
}

/// A `u64` as PostgreSQL's `bigint` (the same bits; the counters it compares stay below 2^63).
fn i(v: u64) -> i64 {
    v as i64
}

fn state_code(s: PackState) -> (i16, u64) {
    match s {
        PackState::Live => (0, 0),
        PackState::Active => (1, 0),
        PackState::Doomed { since_ms } => (2, since_ms),
    }
}

/// A change as the `piecestore_apply` function reads it.
fn change_json(c: &Change) -> serde_json::Value {
    use serde_json::json;
    let slot_parts = |s: &Slot| {
        let pack = match s {
            Slot::Packed(l) => serde_json::Value::String(pack_hex(l.pack)),
            Slot::Object { .. } => serde_json::Value::Null,
        };
        (hex(&s.encode()), i(s.seq()), pack, i(s.len()))
    };
    match c {
        Change::Clear { intents } => json!({"t": "clear", "intents": intents}),
        Change::AddPack { id, info } => {
            let (state, since) = state_code(info.state);
            json!({"t": "add_pack", "id": pack_hex(*id), "size": i(info.size),
                   "payload": i(info.payload), "records": i(info.records),
                   "min_seq": i(info.min_seq), "state": state, "since": i(since)})
        }
        Change::Insert { key, slot } | Change::Put { key, slot } => {
            let (s, seq, pack, len) = slot_parts(slot);
            let t = if matches!(c, Change::Insert { .. }) {
                "insert"
            } else {
                "put"
            };
            json!({"t": t, "key": key, "slot": s, "seq": seq, "pack": pack, "len": len})
        }
        Change::Delete { key, upto_seq } => {
            json!({"t": "delete", "key": key, "upto": i(*upto_seq)})
        }
        Change::Move { key, from, to } => json!({"t": "move", "key": key,
            "from": hex(&Slot::Packed(*from).encode()), "to": hex(&Slot::Packed(*to).encode()),
            "from_pack": pack_hex(from.pack), "to_pack": pack_hex(to.pack), "len": i(from.len)}),
        Change::PackGrew {
            id,
            size,
            payload,
            records,
            min_seq,
        } => json!({"t": "pack_grew", "id": pack_hex(*id), "size": i(*size),
                    "payload": i(*payload), "records": i(*records), "min_seq": i(*min_seq)}),
        Change::Seal { id, size } => json!({"t": "seal", "id": pack_hex(*id), "size": i(*size)}),
        Change::Doom { id, since_ms } => {
            json!({"t": "doom", "id": pack_hex(*id), "since": i(*since_ms)})
        }
        Change::RemovePack { id } => json!({"t": "remove_pack", "id": pack_hex(*id)}),
        Change::SetIntent { key, intent, owner } => {
            let seq = match intent {
                Intent::PutObject { seq, .. } => *seq,
                Intent::DeleteObject { .. } => 0,
            };
            json!({"t": "set_intent", "key": key, "intent": hex(&intent.encode()),
                   "owner": i(*owner), "seq": i(seq)})
        }
        Change::TakeIntent { key, from, to } => {
            json!({"t": "take_intent", "key": key, "from": i(*from), "to": i(*to)})
        }
        Change::ClearIntent { key, owner } => {
            json!({"t": "clear_intent", "key": key, "owner": i(*owner)})
        }
        Change::BumpSeq(seq) => json!({"t": "bump_seq", "seq": i(*seq)}),
        Change::SetMeta { name, value } => {
            json!({"t": "set_meta", "name": name, "value": i(*value)})
        }
    }
}

/// A batch as the apply function reads it: a JSON array of changes.
fn changes_json(changes: &[Change]) -> String {
    serde_json::Value::Array(changes.iter().map(change_json).collect()).to_string()
}

/// A batch as the server is sent it: a bucket's write group as the arrays of
/// `piecestore_group_v1`, anything else as `piecestore_apply_v1`'s JSON.
#[derive(Clone)]
enum Batch {
    /// `piecestore_apply_v1`'s JSON array of changes.
    Json(String),
    /// A write group, for `piecestore_group_v1`.
    Group(Box<GroupArgs>),
}

/// A write group's arguments of `piecestore_group_v1`.
#[derive(Clone)]
struct GroupArgs {
    pack: Vec<u8>,
    /// The pack's size, payload bytes, records, lowest `seq`, and since when it is in its
    /// state.
    info: [i64; 5],
    state: i16,
    bump: i64,
    keys: Vec<String>,
    slots: Vec<Vec<u8>>,
    seqs: Vec<i64>,
    lens: Vec<i64>,
    /// For each change, where its answer is in the function's result (`None`: a counter's
    /// raise, which always takes).
    answers: Vec<Option<usize>>,
}

impl Batch {
    /// `changes` as the group function takes them when they are a write group (the new pack
    /// first, then counter raises and new keys' pieces in that pack), else as JSON.
    fn of(changes: &[Change]) -> Batch {
        Batch::group(changes)
            .map(|g| Batch::Group(Box::new(g)))
            .unwrap_or_else(|| Batch::Json(changes_json(changes)))
    }

    fn group(changes: &[Change]) -> Option<GroupArgs> {
        let (Change::AddPack { id, info }, rest) = changes.split_first()? else {
            return None;
        };
        let (state, since) = state_code(info.state);
        let mut g = GroupArgs {
            pack: id.to_be_bytes().to_vec(),
            info: [
                i(info.size),
                i(info.payload),
                i(info.records),
                i(info.min_seq),
                i(since),
            ],
            state,
            bump: 0,
            keys: Vec::with_capacity(rest.len()),
            slots: Vec::with_capacity(rest.len()),
            seqs: Vec::with_capacity(rest.len()),
            lens: Vec::with_capacity(rest.len()),
            answers: Vec::with_capacity(changes.len()),
        };
        g.answers.push(Some(0));
        for c in rest {
            match c {
                Change::BumpSeq(seq) => {
                    g.bump = g.bump.max(i(*seq));
                    g.answers.push(None);
                }
                Change::Insert {
                    key,
                    slot: slot @ Slot::Packed(l),
                } if l.pack == *id => {
                    g.keys.push(key.clone());
                    g.slots.push(slot.encode());
                    g.seqs.push(i(l.seq));
                    g.lens.push(i(l.len));
                    g.answers.push(Some(g.keys.len()));
                }
                _ => return None,
            }
        }
        Some(g)
    }
}

/// One call of the apply (or group) function on `conn`: whether each change took effect.
async fn apply_call(
    conn: Arc<Conn>,
    ix: String,
    batch: Batch,
    durable: bool,
) -> std::result::Result<Vec<bool>, tokio_postgres::Error> {
    match batch {
        Batch::Json(json) => {
            let row = conn
                .client
                .query_one(&conn.apply, &[&ix, &json, &durable])
                .await?;
            row.try_get(0)
        }
        Batch::Group(g) => {
            let [size, payload, records, min_seq, since] = &g.info;
            let row = conn
                .client
                .query_one(
                    &conn.group,
                    &[
                        &ix, &g.pack, size, payload, records, min_seq, &g.state, since, &g.bump,
                        &g.keys, &g.slots, &g.seqs, &g.lens, &durable,
                    ],
                )
                .await?;
            let took: Vec<bool> = row.try_get(0)?;
            if took.len() != g.keys.len() + 1 {
                // (`checked` refuses an answer of the wrong length.)
                return Ok(Vec::new());
            }
            Ok(g.answers
                .iter()
                .map(|a| a.is_none_or(|at| took[at]))
                .collect())
        }
    }
}

/// What the apply function returned, checked against the number of changes sent.
fn checked(label: &str, took: Vec<bool>, sent: usize) -> Result<Vec<bool>> {
    if took.len() != sent {
        return Err(corrupt(label, "apply result"));
    }
    Ok(took)
}

/// Whether a failed transaction may simply run again (it rolled back: a deadlock between
/// transactions that locked rows in different orders, or a serialization failure).
fn transient(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

impl PgIndex {
    /// Opens shard index `ix` (a name of the shard, the same on every node) in `db`.
    pub(crate) fn open(db: Arc<Db>, ix: String) -> Result<PgIndex> {
        let label = format!("{} ({ix})", db.shown);
        let me = PgIndex { db, ix, label };
        super::check_layout(&me, LAYOUT)?;
        Ok(me)
    }

    fn corrupt(&self, what: &str) -> Error {
        corrupt(&self.label, what)
    }

    fn slot(&self, key: &str, b: &[u8]) -> Result<Slot> {
        Slot::decode(b).ok_or_else(|| self.corrupt(key))
    }

    fn owned(&self, key: &str, b: &[u8], owner: i64) -> Result<OwnedIntent> {
        let intent = Intent::decode(b).ok_or_else(|| self.corrupt(key))?;
        Ok(OwnedIntent {
            intent,
            owner: owner as u64,
        })
    }

    fn apply_with(&self, changes: &[Change], durable: bool) -> Result<Vec<bool>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let batch = Batch::of(changes);
        let mut tries = 0;
        loop {
            let conn = self.db.conn()?;
            let r = self
                .db
                .call(apply_call(conn, self.ix.clone(), batch.clone(), durable))?;
            match r {
                Ok(took) => return checked(&self.label, took, changes.len()),
                Err(e) if transient(&e) && tries < 8 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2 << tries));
                }
                Err(e) => return Err(pg_err(&self.label, &e)),
            }
        }
    }

    fn pack_rows(&self, rows: &[tokio_postgres::Row]) -> Result<Vec<(PackId, PackInfo)>> {
        rows.iter()
            .map(|r| {
                let id: Vec<u8> = r.get(0);
                let id = <[u8; 16]>::try_from(id.as_slice())
                    .map(u128::from_be_bytes)
                    .map_err(|_| self.corrupt("pack id"))?;
                Ok((id, pack_info(r, 1)?))
            })
            .collect()
    }
}

/// A pack row's fields from column `at` on.
fn pack_info(r: &tokio_postgres::Row, at: usize) -> Result<PackInfo> {
    let u = |k: usize| r.get::<_, i64>(at + k) as u64;
    let state = match r.get::<_, i16>(at + 6) {
        0 => PackState::Live,
        1 => PackState::Active,
        _ => PackState::Doomed { since_ms: u(7) },
    };
    Ok(PackInfo {
        size: u(0),
        payload: u(1),
        live_bytes: u(2),
        live_count: u(3),
        records: u(4),
        min_seq: u(5),
        state,
    })
}

const PACK_COLS: &str = "size, payload, live_bytes, live_count, records, min_seq, state, since_ms";

/// The least string above every string that starts with `prefix` (`None`: no bound).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = (last as u32 + 1..=0x10FFFF).find_map(char::from_u32) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl PackIndex for PgIndex {
    fn get(&self, key: &str) -> Result<Option<Slot>> {
        let conn = self.db.conn()?;
        let (ix, k) = (self.ix.clone(), key.to_string());
        let row = self
            .db
            .call(async move { conn.client.query_opt(&conn.get, &[&ix, &k]).await })?
            .map_err(|e| pg_err(&self.label, &e))?;
        row.map(|r| self.slot(key, r.get::<_, &[u8]>(0)))
            .transpose()
    }

    fn lookup(&self, key: &str) -> Result<(Option<Slot>, Option<OwnedIntent>)> {
        let conn = self.db.conn()?;
        let (ix, k) = (self.ix.clone(), key.to_string());
        let row = self
            .db
            .call(async move { conn.client.query_one(&conn.lookup, &[&ix, &k]).await })?
            .map_err(|e| pg_err(&self.label, &e))?;
        let slot = row
            .get::<_, Option<&[u8]>>(0)
            .map(|b| self.slot(key, b))
            .transpose()?;
        let intent = match (row.get::<_, Option<&[u8]>>(1), row.get::<_, Option<i64>>(2)) {
            (Some(b), Some(owner)) => Some(self.owned(key, b, owner)?),
            _ => None,
        };
        Ok((slot, intent))
    }

    fn range(&self, prefix: &str) -> Result<Vec<(String, Slot)>> {
        let rows = match prefix_end(prefix) {
            Some(end) => self.db.query(
                "SELECT key, slot FROM piecestore_pieces WHERE ix = $1 AND key >= $2 \
                 AND key < $3 ORDER BY key",
                vec![
                    Param::Text(self.ix.clone()),
                    Param::Text(prefix.into()),
                    Param::Text(end),
                ],
            )?,
            None => self.db.query(
                "SELECT key, slot FROM piecestore_pieces WHERE ix = $1 AND key >= $2 ORDER BY key",
                vec![Param::Text(self.ix.clone()), Param::Text(prefix.into())],
            )?,
        };
        rows.iter()
            .map(|r| {
                let k: String = r.get(0);
                let slot = self.slot(&k, r.get::<_, &[u8]>(1))?;
                Ok((k, slot))
            })
            .filter(|r| r.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .collect()
    }

    fn apply(&self, changes: &[Change]) -> Result<Vec<bool>> {
        self.apply_with(changes, true)
    }

    fn apply_lazy(&self, changes: &[Change]) -> Result<Vec<bool>> {
        self.apply_with(changes, false)
    }

    fn pack(&self, id: PackId) -> Result<Option<PackInfo>> {
        let rows = self.db.query(
            format!("SELECT id, {PACK_COLS} FROM piecestore_packs WHERE ix = $1 AND id = $2"),
            vec![
                Param::Text(self.ix.clone()),
                Param::Bytes(id.to_be_bytes().to_vec()),
            ],
        )?;
        Ok(self.pack_rows(&rows)?.into_iter().next().map(|(_, p)| p))
    }

    fn packs(&self) -> Result<Vec<(PackId, PackInfo)>> {
        let rows = self.db.query(
            format!("SELECT id, {PACK_COLS} FROM piecestore_packs WHERE ix = $1 ORDER BY id"),
            vec![Param::Text(self.ix.clone())],
        )?;
        self.pack_rows(&rows)
    }

    fn snapshot(&self) -> Result<Snapshot> {
        // One transaction (repeatable read): the packs and pieces of one moment.
        let conn = self.db.conn()?;
        let ix = self.ix.clone();
        let (packs, pieces) = self
            .db
            .call(async move {
                let c = &conn.client;
                c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                let read = async {
                    let packs = c
                        .query(
                            &format!(
                                "SELECT id, {PACK_COLS} FROM piecestore_packs WHERE ix = $1 \
                                 ORDER BY id"
                            ),
                            &[&ix],
                        )
                        .await?;
                    let pieces = c
                        .query(
                            "SELECT key, slot FROM piecestore_pieces WHERE ix = $1 ORDER BY key",
                            &[&ix],
                        )
                        .await?;
                    Ok::<_, tokio_postgres::Error>((packs, pieces))
                }
                .await;
                c.batch_execute("COMMIT").await?;
                read
            })?
            .map_err(|e| pg_err(&self.label, &e))?;
        let packs = self.pack_rows(&packs)?;
        let pieces = pieces
            .iter()
            .map(|r| {
                let k: String = r.get(0);
                let slot = self.slot(&k, r.get::<_, &[u8]>(1))?;
                Ok((k, slot))
            })
            .collect::<Result<_>>()?;
        Ok((packs, pieces))
    }

    fn intent(&self, key: &str) -> Result<Option<OwnedIntent>> {
        let rows = self.db.query(
            "SELECT intent, owner FROM piecestore_intents WHERE ix = $1 AND key = $2",
            vec![Param::Text(self.ix.clone()), Param::Text(key.into())],
        )?;
        rows.first()
            .map(|r| self.owned(key, r.get::<_, &[u8]>(0), r.get(1)))
            .transpose()
    }

    fn intents(&self) -> Result<Vec<(String, OwnedIntent)>> {
        let rows = self.db.query(
            "SELECT key, intent, owner FROM piecestore_intents WHERE ix = $1 ORDER BY key",
            vec![Param::Text(self.ix.clone())],
        )?;
        rows.iter()
            .map(|r| {
                let k: String = r.get(0);
                let owned = self.owned(&k, r.get::<_, &[u8]>(1), r.get(2))?;
                Ok((k, owned))
            })
            .collect()
    }

    fn meta(&self, name: &str) -> Result<Option<u64>> {
        let rows = self.db.query(
            "SELECT value FROM piecestore_meta WHERE ix = $1 AND name = $2",
            vec![Param::Text(self.ix.clone()), Param::Text(name.into())],
        )?;
        // `max_seq` is as the last durable commit left it: lazy commits since carry numbers
        // from a clock that has moved past it (pack-format.md §9.2), and recovery raises it
        // from the records it replays.
        let stored = rows.first().map(|r| r.get::<_, i64>(0) as u64);
        Ok(stored)
    }

    fn is_empty(&self) -> Result<bool> {
        let rows = self.db.query(
            "SELECT EXISTS (SELECT 1 FROM piecestore_pieces WHERE ix = $1)",
            vec![Param::Text(self.ix.clone())],
        )?;
        Ok(!rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    fn len(&self) -> Result<u64> {
        let rows = self.db.query(
            "SELECT count(*) FROM piecestore_pieces WHERE ix = $1",
            vec![Param::Text(self.ix.clone())],
        )?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    fn describe(&self) -> String {
        self.label.clone()
    }

    fn remote(&self) -> Option<&dyn super::RemoteIndex> {
        Some(self)
    }
}

impl super::RemoteIndex for PgIndex {
    fn get_async(&self, key: &str) -> super::IndexFuture<Option<Slot>> {
        let conn = match self.db.conn() {
            Ok(c) => c,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let (ix, k, label) = (self.ix.clone(), key.to_string(), self.label.clone());
        Box::pin(async move {
            let row = conn
                .client
                .query_opt(&conn.get, &[&ix, &k])
                .await
                .map_err(|e| pg_err(&label, &e))?;
            row.map(|r| Slot::decode(r.get::<_, &[u8]>(0)).ok_or_else(|| corrupt(&label, &k)))
                .transpose()
        })
    }

    fn apply_async(&self, changes: &[Change], durable: bool) -> super::IndexFuture<Vec<bool>> {
        let conn = match self.db.conn() {
            Ok(c) => c,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let call = apply_call(conn, self.ix.clone(), Batch::of(changes), durable);
        let (label, n) = (self.label.clone(), changes.len());
        Box::pin(async move {
            // A transaction that deadlocked is not retried here: the caller's synchronous
            // path retries it.
            let took = call.await.map_err(|e| pg_err(&label, &e))?;
            checked(&label, took, n)
        })
    }
}

fn corrupt(label: &str, what: &str) -> Error {
    Error::Corrupt {
        key: what.to_string(),
        backend: label.to_string(),
        detail: "the pack index holds an undecodable record; `piecestore fsck \
                 --rebuild-index` rebuilds it"
            .into(),
    }
}

/// Lock keys of a shard's leases: `(hash of the shard's name, what)`.
const LOCK_GC: i32 = 1;
const LOCK_RECOVER: i32 = 2;
const LOCK_OPEN: i32 = 3;

/// This node's membership of one shard: a connection of its own holding the node's advisory
/// locks (its writer id; a shared lock on the shard, made exclusive for a rebuild; the
/// leases it takes). They go when the connection closes, so a dead node holds nothing.
pub(crate) struct PgMember {
    db: Arc<Db>,
    ix: String,
    key: i32,
    id: u64,
    client: Arc<Client>,
}

impl fmt::Debug for PgMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgMember")
            .field("ix", &self.ix)
            .field("id", &self.id)
            .finish()
    }
}

/// The liveness test of writer ids: a writer is alive while some session holds the advisory
/// lock of its id (bigint form: high half in `classid`, low half in `objid`).
const HELD: &str = "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' \
    AND l.objsubid = 1 AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE \
    datname = current_database()) AND ((l.classid::bigint << 32) | l.objid::bigint) = ";

impl PgMember {
    /// Registers this node as a writer of shard `ix`, waiting up to `wait` while a rebuild
    /// holds the shard alone.
    pub(crate) fn register(db: Arc<Db>, ix: String, wait: Duration) -> Result<PgMember> {
        let client = Arc::new(db.connect_raw()?);
        let key = crate::shard::fnv1a32(ix.as_bytes()) as i32;
        let shown = db.shown.clone();
        let deadline = Instant::now() + wait;
        loop {
            let c = Arc::clone(&client);
            let got: bool = db
                .call(async move {
                    c.query_one(
                        "SELECT pg_try_advisory_lock_shared($1, $2)",
                        &[&key, &LOCK_OPEN],
                    )
                    .await
                    .map(|r| r.get(0))
                })?
                .map_err(|e| pg_err(&shown, &e))?;
            if got {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Backend {
                    op: "open",
                    key: None,
                    backend: shown,
                    message: "another node has been rebuilding the pack index for too long".into(),
                    retryable: true,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let id = loop {
            let id = ((super::super::new_pack_id() as u64) >> 2) | 1;
            let c = Arc::clone(&client);
            let ixc = ix.clone();
            let got: bool = db
                .call(async move {
                    let got: bool = c
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&(id as i64)])
                        .await?
                        .get(0);
                    if got {
                        // Forget writers that are gone, then record this one.
                        c.execute(
                            &format!(
                                "DELETE FROM piecestore_writers w WHERE w.ix = $1 AND NOT {HELD} w.id)"
                            ),
                            &[&ixc],
                        )
                        .await?;
                        c.execute(
                            "INSERT INTO piecestore_writers VALUES ($1, $2) ON CONFLICT DO NOTHING",
                            &[&ixc, &(id as i64)],
                        )
                        .await?;
                    }
                    Ok::<_, tokio_postgres::Error>(got)
                })?
                .map_err(|e| pg_err(&shown, &e))?;
            if got {
                break id;
            }
        };
        Ok(PgMember {
            db,
            ix,
            key,
            id,
            client,
        })
    }

    fn one_bool(&self, sql: String, params: Vec<Param>) -> std::io::Result<bool> {
        let c = Arc::clone(&self.client);
        self.db
            .call(async move {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    params.iter().map(Param::as_sql).collect();
                c.query_one(sql.as_str(), &refs)
                    .await
                    .map(|r| r.get::<_, bool>(0))
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .map_err(|e| std::io::Error::other(pg_err(&self.db.shown, &e).to_string()))
    }

    fn lease_code(name: &str) -> i32 {
        match name {
            "gc" => LOCK_GC,
            _ => LOCK_RECOVER,
        }
    }

    /// Lets go of the exclusive lock `(key, what)`.
    fn unlock(&self, what: i32) {
        let sql = "SELECT pg_advisory_unlock($1, $2)";
        if let Err(e) = self.one_bool(sql.into(), vec![Param::I32(self.key), Param::I32(what)]) {
            tracing::warn!(error = %e, "cannot let go of a PostgreSQL index lease (it goes when the connection closes)");
        }
    }
}

impl super::super::lease::Members for PgMember {
    fn id(&self) -> u64 {
        self.id
    }

    fn alive(&self, id: u64) -> bool {
        // When in doubt (the database unreachable), alive: nothing of its is taken over.
        self.one_bool(format!("SELECT {HELD} $1)"), vec![Param::Int(id as i64)])
            .unwrap_or(true)
    }

    fn any_alive(&self, except: u64) -> bool {
        self.one_bool(
            format!(
                "SELECT EXISTS (SELECT 1 FROM piecestore_writers w WHERE w.ix = $1 \
                 AND w.id <> $2 AND {HELD} w.id))"
            ),
            vec![Param::Text(self.ix.clone()), Param::Int(except as i64)],
        )
        .unwrap_or(true)
    }

    fn exclusive(self: Arc<Self>) -> std::io::Result<Option<super::super::lease::Guard>> {
        // A session's own shared lock does not stand in its way: granted when no other node
        // has the shard open.
        let got = self.one_bool(
            "SELECT pg_try_advisory_lock($1, $2)".into(),
            vec![Param::I32(self.key), Param::I32(LOCK_OPEN)],
        )?;
        Ok(got.then(|| Box::new(PgGuard(Arc::clone(&self), LOCK_OPEN)) as _))
    }

    fn lease(
        self: Arc<Self>,
        name: &str,
        wait: Duration,
    ) -> std::io::Result<Option<super::super::lease::Guard>> {
        let what = Self::lease_code(name);
        let deadline = Instant::now() + wait;
        loop {
            if self.one_bool(
                "SELECT pg_try_advisory_lock($1, $2)".into(),
                vec![Param::I32(self.key), Param::I32(what)],
            )? {
                return Ok(Some(Box::new(PgGuard(Arc::clone(&self), what))));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An exclusive advisory lock of a shard, let go when dropped.
struct PgGuard(Arc<PgMember>, i32);

impl Drop for PgGuard {
    fn drop(&mut self) {
        self.0.unlock(self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::index::Loc;

    fn piece(key: &str, pack: PackId, seq: u64) -> Change {
        Change::Insert {
            key: key.into(),
            slot: Slot::Packed(Loc {
                pack,
                offset: 8,
                len: 4 + seq,
                crc: 7,
                seq,
            }),
        }
    }

    fn add(id: PackId) -> Change {
        Change::AddPack {
            id,
            info: PackInfo::new_active(900),
        }
    }

    #[test]
    fn a_write_group_goes_as_arrays_and_its_answers_come_back_one_a_change() {
        let group = vec![
            add(5),
            piece("a", 5, 11),
            Change::BumpSeq(12),
            piece("b", 5, 12),
        ];
        let Batch::Group(g) = Batch::of(&group) else {
            panic!("a write group went as JSON");
        };
        assert_eq!(g.pack, 5u128.to_be_bytes());
        assert_eq!(g.keys, ["a", "b"]);
        assert_eq!(g.seqs, [11, 12]);
        assert_eq!(g.lens, [15, 16]);
        assert_eq!(g.bump, 12);
        assert_eq!(g.answers, [Some(0), Some(1), None, Some(2)]);
        // Anything else goes as the apply function's JSON: the pack not first, a piece in
        // another pack, two packs, a change of another kind.
        for other in [
            vec![piece("a", 5, 11), add(5)],
            vec![add(5), piece("a", 6, 11)],
            vec![add(5), add(6)],
            vec![add(5), Change::RemovePack { id: 6 }],
            vec![],
        ] {
            assert!(matches!(Batch::of(&other), Batch::Json(_)), "{other:?}");
        }
    }
}
