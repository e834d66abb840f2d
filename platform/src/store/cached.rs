//! Statements of fixed text on the turn path, prepared once per connection.
//!
//! Diesel finds a statement's prepared form by the query's type when the type alone decides the
//! SQL; otherwise (every insert, anything run through the multi-backend connection) it builds
//! the SQL text again on each run to look it up, and it never keeps `sql_query` or `UPDATE`
//! statements at all. On SQLite's replay-log writer that building and re-preparing was about a
//! fifth of its time; on PostgreSQL every such statement is parsed and planned again on the
//! server (0.1–0.2 ms each). A [`Fixed`] statement names a type of its own as its cache key, so
//! it is built and prepared the first time a connection runs it and only bound after that.

use diesel::backend::Backend;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sqlite::Sqlite;
use diesel::{PgConnection, QueryResult, RunQueryDsl, SqliteConnection};

/// What a [`Fixed`] statement pushes its SQL and values to.
pub(crate) type Out<'a, 'b, DB = Sqlite> = AstPass<'a, 'b, DB>;

/// A statement whose SQL text is the same on every run (only its bound values change).
pub(crate) trait Fixed<DB: Backend = Sqlite> {
    /// The statement's cache key: a type no other statement uses (by convention the statement's
    /// own type with `'static` lifetimes).
    type Key: 'static;
    /// Pushes the SQL text with the bound values in their places.
    fn walk<'b>(&'b self, out: Out<'_, 'b, DB>) -> QueryResult<()>;
}

/// A [`Fixed`] statement that answers rows of `SqlType`.
pub(crate) trait FixedQuery<DB: Backend>: Fixed<DB> {
    /// The SQL types of a row it answers.
    type SqlType;
}

/// Runs a [`Fixed`] statement with its prepared form cached under its key.
pub(crate) struct Cached<S, DB = Sqlite>(S, std::marker::PhantomData<DB>);

/// [`Cached`] on SQLite.
pub(crate) fn cached<S: Fixed<Sqlite>>(s: S) -> Cached<S, Sqlite> {
    Cached(s, std::marker::PhantomData)
}

/// [`Cached`] on PostgreSQL.
pub(crate) fn cached_pg<S: Fixed<Pg>>(s: S) -> Cached<S, Pg> {
    Cached(s, std::marker::PhantomData)
}

impl<S: Fixed<DB>, DB: Backend> QueryId for Cached<S, DB> {
    type QueryId = S::Key;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<S: Fixed<DB>, DB: Backend> QueryFragment<DB> for Cached<S, DB> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk(out)
    }
}

impl<S: FixedQuery<Pg>> Query for Cached<S, Pg> {
    type SqlType = S::SqlType;
}

impl<S> RunQueryDsl<SqliteConnection> for Cached<S, Sqlite> {}

impl<S> RunQueryDsl<PgConnection> for Cached<S, Pg> {}

/// Pushes bound values separated by commas: `bind_list!(out; Text => &a, BigInt => &b)`.
macro_rules! bind_list {
    ($out:ident; $first_ty:ty => $first:expr $(, $ty:ty => $v:expr)* $(,)?) => {{
        $out.push_bind_param::<$first_ty, _>($first)?;
        $(
            $out.push_sql(", ");
            $out.push_bind_param::<$ty, _>($v)?;
        )*
    }};
}
pub(crate) use bind_list;

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::SimpleConnection;
    use diesel::sql_types::{BigInt, Text};
    use diesel::Connection;

    struct Put<'a>(&'a str, i64);

    impl Fixed for Put<'_> {
        type Key = Put<'static>;
        fn walk<'b>(&'b self, mut out: Out<'_, 'b>) -> QueryResult<()> {
            out.push_sql("INSERT INTO t (name, n) VALUES (");
            bind_list!(out; Text => &self.0, BigInt => &self.1);
            out.push_sql(")");
            Ok(())
        }
    }

    struct Bump<'a>(&'a str);

    impl Fixed for Bump<'_> {
        type Key = Bump<'static>;
        fn walk<'b>(&'b self, mut out: Out<'_, 'b>) -> QueryResult<()> {
            out.push_sql("UPDATE t SET n = n + 1 WHERE name = ");
            out.push_bind_param::<Text, _>(&self.0)?;
            Ok(())
        }
    }

    #[test]
    fn each_statement_keeps_its_own_text_and_takes_new_values_every_run() {
        let mut c = SqliteConnection::establish(":memory:").unwrap();
        c.batch_execute("CREATE TABLE t (name TEXT PRIMARY KEY, n BIGINT NOT NULL)")
            .unwrap();
        for (name, n) in [("a", 1), ("b", 20), ("c", 300)] {
            assert_eq!(cached(Put(name, n)).execute(&mut c).unwrap(), 1);
        }
        // A second statement of another shape is not mistaken for the first one's cached form.
        assert_eq!(cached(Bump("b")).execute(&mut c).unwrap(), 1);
        assert_eq!(cached(Bump("b")).execute(&mut c).unwrap(), 1);
        assert_eq!(cached(Bump("zz")).execute(&mut c).unwrap(), 0);
        let rows: Vec<(String, i64)> = diesel::sql_query("SELECT name, n FROM t ORDER BY name")
            .load::<Row>(&mut c)
            .unwrap()
            .into_iter()
            .map(|r| (r.name, r.n))
            .collect();
        assert_eq!(rows, [("a".into(), 1), ("b".into(), 22), ("c".into(), 300)]);
    }

    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
}
