//! The app's SQLite triggers as PL/pgSQL: a trigger function and a row trigger that do what
//! SQLite did, or the reason they cannot.
//!
//! Where SQLite and Postgres run triggers differently, the port keeps SQLite's behaviour or is
//! refused:
//! - SQLite (recursive_triggers off, its default) does not fire a trigger that is already
//!   running further up; Postgres would, so the function returns at once when it finds itself
//!   running (a transaction-local setting it sets on entry and clears on exit).
//! - SQLite runs an AFTER trigger as each row changes, Postgres after the statement: the two
//!   agree only when the trigger writes no row of its own table but the one that fired it, so
//!   writes to its own table must be pinned to NEW's (or OLD's) primary key.
//! - `RAISE(ABORT, msg)` becomes an exception of class 23 (integrity), the class SQLite's
//!   constraint error maps to in drivers; `RAISE(IGNORE)` in a BEFORE trigger skips the row.
//!   `RAISE(FAIL)` and `RAISE(ROLLBACK)` keep or undo more than a Postgres error does: refused.

use sqlparser::ast::{
    AssignmentTarget, CreateTrigger, Delete, Expr, FromTable, FunctionArg, FunctionArgExpr,
    FunctionArguments, Insert, ObjectName, Query, SelectItem, SetExpr, Statement, TableFactor,
    TableObject, TableWithJoins, TriggerEvent, TriggerObject, TriggerObjectKind, TriggerPeriod,
    Update, Value,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

use super::{Column, Relation, Scope, Why, condition, translate, value_for};
use crate::model::quote_ident;

/// A table a trigger fires on or writes to.
#[derive(Debug, Clone)]
pub struct Table {
    /// Its Postgres name, qualified and quoted.
    pub name: String,
    /// Its columns.
    pub columns: Vec<Column>,
    /// Its primary-key columns' SQLite names (empty: no key that identifies a row).
    pub key: Vec<String>,
    /// The INTEGER PRIMARY KEY column, whose value SQLite has not chosen yet in a BEFORE
    /// INSERT trigger.
    pub rowid_alias: Option<String>,
    /// Columns with a DEFAULT in SQLite that Postgres does not have.
    pub lost_defaults: Vec<String>,
}

/// A trigger in Postgres' SQL.
#[derive(Debug, Clone)]
pub struct Ported {
    /// CREATE FUNCTION.
    pub function: String,
    /// CREATE TRIGGER.
    pub trigger: String,
    /// The trigger's Postgres name.
    pub name: String,
    /// Its table's Postgres name, qualified and quoted.
    pub table: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Event {
    Insert,
    Update,
    Delete,
}

/// What a body statement is translated against.
struct Ctx<'a> {
    own: &'a str,
    event: Event,
    table: &'a Table,
    rows: Vec<Relation>,
    before: bool,
    guard: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<Table>,
}

/// Translates a CREATE TRIGGER; `function` is the qualified, quoted name its function gets.
pub fn translate_trigger(
    create: &str,
    function: &str,
    lookup: &dyn Fn(&str) -> Option<Table>,
) -> Result<Ported, Why> {
    let t = match Parser::parse_sql(&SQLiteDialect {}, create).as_deref() {
        Ok([Statement::CreateTrigger(t)]) => t.clone(),
        Ok(_) => return Err("not one CREATE TRIGGER statement".into()),
        Err(e) => return Err(format!("cannot parse it: {e}")),
    };
    port(&t, function, lookup)
}

fn port(
    t: &CreateTrigger,
    function: &str,
    lookup: &dyn Fn(&str) -> Option<Table>,
) -> Result<Ported, Why> {
    let own = last_name(&t.table_name);
    let table = lookup(&own).ok_or_else(|| {
        format!("it fires on {own}, which is not a table sqlite2pg moves (a view's INSTEAD OF trigger is not ported)")
    })?;
    let before = match t.period {
        None | Some(TriggerPeriod::Before) => true,
        Some(TriggerPeriod::After) => false,
        Some(other) => return Err(format!("{other} triggers are not ported")),
    };
    if matches!(
        t.trigger_object,
        Some(TriggerObjectKind::For(TriggerObject::Statement))
            | Some(TriggerObjectKind::ForEach(TriggerObject::Statement))
    ) {
        return Err("SQLite has no statement triggers".into());
    }
    let (event, of) = match t.events.as_slice() {
        [TriggerEvent::Insert] => (Event::Insert, Vec::new()),
        [TriggerEvent::Delete] => (Event::Delete, Vec::new()),
        [TriggerEvent::Update(cols)] => (Event::Update, cols.clone()),
        _ => return Err("not one INSERT, UPDATE or DELETE event".into()),
    };
    let row = |name: &str| Relation {
        name: name.to_string(),
        qualifier: Some(name.to_string()),
        columns: table.columns.clone(),
        record: true,
    };
    let rows = match event {
        Event::Insert => vec![row("NEW")],
        Event::Delete => vec![row("OLD")],
        Event::Update => vec![row("NEW"), row("OLD")],
    };
    let name = crate::model::truncate_ident(&last_name(&t.name));
    let guard = format!("sqlite2pg.trigger_{:016x}", fnv(&format!("{own}\0{name}")));
    let ret = match (before, event) {
        (true, Event::Delete) => "OLD",
        (true, _) => "NEW",
        (false, _) => "NULL",
    };
    let ctx = Ctx {
        own: &own,
        event,
        table: &table,
        rows,
        before,
        guard: &guard,
        lookup,
    };
    let records = Scope {
        relations: ctx.rows.clone(),
    };
    let when = t
        .condition
        .as_ref()
        .map(|c| condition(c, &records).map_err(|w| format!("its WHEN: {w}")))
        .transpose()?;
    let statements = t
        .statements
        .as_ref()
        .map(|s| s.statements().clone())
        .unwrap_or_default();
    if statements.is_empty() {
        return Err("its body is empty".into());
    }
    let mut body = Vec::new();
    for (i, st) in statements.iter().enumerate() {
        body.push(statement(st, &ctx).map_err(|w| format!("statement {}: {w}", i + 1))?);
    }
    let mut text = body.join("\n  ");
    if let Some(w) = &when {
        text.push_str(w);
    }
    if before
        && event == Event::Insert
        && let Some(id) = &table.rowid_alias
    {
        let target = table
            .columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(id))
            .map_or(id.as_str(), |c| c.target.as_str());
        if text.contains(&format!("NEW.{}", quote_ident(target))) {
            return Err(format!(
                "it reads NEW.{id} in a BEFORE INSERT trigger: SQLite has not chosen the new row's id yet (NEW.{id} is NULL when the app leaves it out), Postgres has"
            ));
        }
    }
    let tag = dollar_tag(&text);
    let function_sql = format!(
        "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {tag}\n#variable_conflict use_column\nBEGIN\n  IF current_setting('{guard}', true) = 'on' THEN RETURN {ret}; END IF;\n  PERFORM set_config('{guard}', 'on', true);\n  {}\n  PERFORM set_config('{guard}', 'off', true);\n  RETURN {ret};\nEND\n{tag}",
        body.join("\n  ")
    );
    let event_sql = match event {
        Event::Insert => "INSERT".to_string(),
        Event::Delete => "DELETE".to_string(),
        Event::Update if of.is_empty() => "UPDATE".to_string(),
        Event::Update => {
            let mut cols = Vec::new();
            for c in &of {
                cols.push(quote_ident(&target_column(&table, &c.value)?.target));
            }
            format!("UPDATE OF {}", cols.join(", "))
        }
    };
    let trigger_sql = format!(
        "CREATE TRIGGER {} {} {event_sql} ON {} FOR EACH ROW{} EXECUTE FUNCTION {function}()",
        quote_ident(&name),
        if before { "BEFORE" } else { "AFTER" },
        table.name,
        when.map(|w| format!(" WHEN ({w})")).unwrap_or_default(),
    );
    Ok(Ported {
        function: function_sql,
        trigger: trigger_sql,
        name,
        table: table.name.clone(),
    })
}

fn statement(st: &Statement, ctx: &Ctx) -> Result<String, Why> {
    match st {
        Statement::Update(u) => update(u, ctx),
        Statement::Insert(i) => insert(i, ctx),
        Statement::Delete(d) => delete(d, ctx),
        Statement::Query(q) => select(q, ctx),
        other => Err(format!("{} is not ported", first_words(&other.to_string()))),
    }
}

fn update(u: &Update, ctx: &Ctx) -> Result<String, Why> {
    if let Some(or) = &u.or {
        return Err(format!("UPDATE {or} is not ported"));
    }
    if u.from.is_some() || u.returning.is_some() || !u.order_by.is_empty() || u.limit.is_some() {
        return Err("UPDATE with FROM, RETURNING, ORDER BY or LIMIT is not ported".into());
    }
    let (name, target) = written(&u.table, ctx)?;
    let scope = with_rows(&name, &target, ctx);
    let selection = unrowid(&name, u.selection.as_ref(), ctx)?;
    let mut sets = Vec::new();
    for a in &u.assignments {
        let AssignmentTarget::ColumnName(col) = &a.target else {
            return Err("UPDATE SET (a, b) = ... is not ported".into());
        };
        let c = target_column(&target, &last_name(col))?;
        if name.eq_ignore_ascii_case(ctx.own)
            && ctx
                .table
                .key
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&c.name))
        {
            return Err(format!(
                "it changes the key column {} of its own table: later rows of the statement would find other rows on each side",
                c.name
            ));
        }
        let v = value_for(&a.value, &scope, &c.ty).map_err(|w| format!("SET {}: {w}", c.name))?;
        sets.push(format!("{} = {v}", quote_ident(&c.target)));
    }
    pinned(&name, selection.as_ref(), ctx)?;
    Ok(format!(
        "UPDATE {} SET {}{};",
        target.name,
        sets.join(", "),
        where_clause(selection.as_ref(), &scope)?
    ))
}

fn delete(d: &Delete, ctx: &Ctx) -> Result<String, Why> {
    let from = match &d.from {
        FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
    };
    if !d.tables.is_empty()
        || d.using.is_some()
        || d.returning.is_some()
        || !d.order_by.is_empty()
        || d.limit.is_some()
    {
        return Err("DELETE with USING, RETURNING, ORDER BY or LIMIT is not ported".into());
    }
    let [table] = from.as_slice() else {
        return Err("DELETE from more than one table".into());
    };
    let (name, target) = written(table, ctx)?;
    let scope = with_rows(&name, &target, ctx);
    let selection = unrowid(&name, d.selection.as_ref(), ctx)?;
    pinned(&name, selection.as_ref(), ctx)?;
    Ok(format!(
        "DELETE FROM {}{};",
        target.name,
        where_clause(selection.as_ref(), &scope)?
    ))
}

fn insert(i: &Insert, ctx: &Ctx) -> Result<String, Why> {
    if i.or.is_some() || i.ignore || i.replace_into {
        return Err("INSERT OR ... / REPLACE is not ported: SQLite's conflict resolution covers NOT NULL and CHECK too, Postgres' ON CONFLICT only unique keys".into());
    }
    if i.on.is_some() || i.returning.is_some() || !i.assignments.is_empty() {
        return Err("INSERT with an upsert clause or RETURNING is not ported".into());
    }
    let TableObject::TableName(obj) = &i.table else {
        return Err("INSERT into a table function".into());
    };
    let name = last_name(obj);
    if name.eq_ignore_ascii_case(ctx.own) {
        return Err(format!(
            "it inserts into its own table {name}: SQLite runs it as each row changes, Postgres after the statement, so the statement's later rows would see different tables"
        ));
    }
    let target = (ctx.lookup)(&name)
        .ok_or_else(|| format!("it writes {name}, which is not a table sqlite2pg moves"))?;
    let values = match i.source.as_deref().map(|q| q.body.as_ref()) {
        Some(SetExpr::Values(v)) if v.rows.len() == 1 => &v.rows[0].content,
        _ => return Err("INSERT ... SELECT and multi-row VALUES are not ported".into()),
    };
    let columns: Vec<&Column> = if i.columns.is_empty() {
        target.columns.iter().collect()
    } else {
        i.columns
            .iter()
            .map(|c| target_column(&target, &last_name(c)))
            .collect::<Result<_, _>>()?
    };
    if columns.len() != values.len() {
        return Err(format!(
            "{} values for {} columns",
            values.len(),
            columns.len()
        ));
    }
    if let Some(lost) = target.lost_defaults.iter().find(|d| {
        !columns
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(d.as_str()))
    }) {
        return Err(format!(
            "it leaves out {name}.{lost}, whose SQLite DEFAULT Postgres does not have"
        ));
    }
    let scope = Scope {
        relations: ctx.rows.clone(),
    };
    let mut out = Vec::new();
    for (c, v) in columns.iter().zip(values) {
        out.push(value_for(v, &scope, &c.ty).map_err(|w| format!("{}: {w}", c.name))?);
    }
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.target)).collect();
    Ok(format!(
        "INSERT INTO {} ({}) VALUES ({});",
        target.name,
        names.join(", "),
        out.join(", ")
    ))
}

/// `SELECT RAISE(...) [WHERE c]` and `SELECT CASE WHEN c THEN RAISE(...) END`: the forms
/// triggers use to refuse a change. Any other SELECT has no effect worth porting, or reads
/// tables, and is refused.
fn select(q: &Query, ctx: &Ctx) -> Result<String, Why> {
    let SetExpr::Select(s) = q.body.as_ref() else {
        return Err("a compound SELECT is not ported".into());
    };
    if q.with.is_some()
        || q.order_by.is_some()
        || q.limit_clause.is_some()
        || !s.from.is_empty()
        || s.having.is_some()
        || s.projection.len() != 1
    {
        return Err("only SELECT RAISE(...) [WHERE ...] is ported from a trigger's SELECTs".into());
    }
    let SelectItem::UnnamedExpr(e) = &s.projection[0] else {
        return Err("only SELECT RAISE(...) [WHERE ...] is ported from a trigger's SELECTs".into());
    };
    let scope = Scope {
        relations: ctx.rows.clone(),
    };
    let mut conds = Vec::new();
    if let Some(w) = &s.selection {
        conds.push(condition(w, &scope)?);
    }
    let raise = match e {
        Expr::Case {
            operand: None,
            conditions,
            else_result,
            ..
        } if conditions.len() == 1
            && else_result
                .as_deref()
                .is_none_or(|e| matches!(e, Expr::Value(v) if v.value == Value::Null)) =>
        {
            conds.push(condition(&conditions[0].condition, &scope)?);
            &conditions[0].result
        }
        other => other,
    };
    let action = raise_action(raise, &scope, ctx)?;
    Ok(if conds.is_empty() {
        action
    } else {
        let c: Vec<String> = conds.iter().map(|c| format!("({c})")).collect();
        format!("IF {} THEN {action} END IF;", c.join(" AND "))
    })
}

fn raise_action(e: &Expr, scope: &Scope, ctx: &Ctx) -> Result<String, Why> {
    let not_raise = || "only SELECT RAISE(...) [WHERE ...] is ported from a trigger's SELECTs";
    let Expr::Function(f) = e else {
        return Err(not_raise().into());
    };
    if !last_name(&f.name).eq_ignore_ascii_case("RAISE") {
        return Err(not_raise().into());
    }
    let FunctionArguments::List(list) = &f.args else {
        return Err(not_raise().into());
    };
    let args: Vec<&Expr> = list
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect();
    let kind = match args.first() {
        Some(Expr::Identifier(id)) => id.value.to_ascii_uppercase(),
        _ => return Err("RAISE without IGNORE, ROLLBACK, ABORT or FAIL".into()),
    };
    match (kind.as_str(), args.as_slice()) {
        ("IGNORE", [_]) if ctx.before => Ok(format!(
            "PERFORM set_config('{}', 'off', true); RETURN NULL;",
            ctx.guard
        )),
        ("IGNORE", [_]) => Err(
            "RAISE(IGNORE) in an AFTER trigger: SQLite skips the row's later triggers, Postgres runs them"
                .into(),
        ),
        ("ABORT", [_, msg]) => {
            let m = translate(msg, scope)?;
            if m.kind != super::Kind::Text {
                return Err("RAISE's message is not text".into());
            }
            Ok(format!(
                "RAISE EXCEPTION USING MESSAGE = {}, ERRCODE = 'integrity_constraint_violation';",
                m.sql
            ))
        }
        ("ROLLBACK", _) => Err(
            "RAISE(ROLLBACK) ends the whole transaction in SQLite; a Postgres error ends it only back to the app's last savepoint"
                .into(),
        ),
        ("FAIL", _) => Err(
            "RAISE(FAIL) keeps the rows the statement already changed; a Postgres error undoes them"
                .into(),
        ),
        _ => Err(format!("RAISE({kind}, ...) is not understood")),
    }
}

/// The table an UPDATE or DELETE writes: SQLite allows only an unqualified name in a trigger.
fn written(t: &TableWithJoins, ctx: &Ctx) -> Result<(String, Table), Why> {
    let TableFactor::Table {
        name, alias: None, ..
    } = &t.relation
    else {
        return Err("it writes something other than a named table".into());
    };
    if !t.joins.is_empty() {
        return Err("it writes a join".into());
    }
    let n = last_name(name);
    let target = (ctx.lookup)(&n)
        .ok_or_else(|| format!("it writes {n}, which is not a table sqlite2pg moves"))?;
    Ok((n, target))
}

/// The written table's columns unqualified, and NEW/OLD.
fn with_rows(name: &str, t: &Table, ctx: &Ctx) -> Scope {
    let mut relations = vec![Relation {
        name: name.to_string(),
        qualifier: None,
        columns: t.columns.clone(),
        record: false,
    }];
    relations.extend(ctx.rows.iter().cloned());
    Scope { relations }
}

fn where_clause(w: Option<&Expr>, scope: &Scope) -> Result<String, Why> {
    Ok(match w {
        Some(w) => format!(" WHERE {}", condition(w, scope)?),
        None => String::new(),
    })
}

/// A write to the trigger's own table must touch only the row that fired it: its WHERE holds
/// `key = NEW.key` (or OLD) for every primary-key column, and the trigger runs AFTER.
fn pinned(table: &str, selection: Option<&Expr>, ctx: &Ctx) -> Result<(), Why> {
    if !table.eq_ignore_ascii_case(ctx.own) {
        return Ok(());
    }
    if ctx.before {
        return Err(format!(
            "a BEFORE trigger writes its own table {table}: SQLite leaves the result undefined, Postgres refuses it"
        ));
    }
    let mut conjuncts = Vec::new();
    if let Some(s) = selection {
        and_terms(s, &mut conjuncts);
    }
    let is_key = |e: &Expr, k: &str| match e {
        Expr::Identifier(id) => id.value.eq_ignore_ascii_case(k),
        Expr::CompoundIdentifier(p) => {
            p.len() == 2
                && p[0].value.eq_ignore_ascii_case(table)
                && p[1].value.eq_ignore_ascii_case(k)
        }
        _ => false,
    };
    let is_row_key = |e: &Expr, k: &str| match e {
        Expr::CompoundIdentifier(p) => {
            p.len() == 2
                && (p[0].value.eq_ignore_ascii_case("NEW")
                    || p[0].value.eq_ignore_ascii_case("OLD"))
                && p[1].value.eq_ignore_ascii_case(k)
        }
        _ => false,
    };
    let all = !ctx.table.key.is_empty()
        && ctx.table.key.iter().all(|k| {
            conjuncts.iter().any(|c| match c {
                Expr::BinaryOp {
                    left,
                    op: sqlparser::ast::BinaryOperator::Eq,
                    right,
                } => {
                    (is_key(left, k) && is_row_key(right, k))
                        || (is_key(right, k) && is_row_key(left, k))
                }
                _ => false,
            })
        });
    if all {
        Ok(())
    } else {
        Err(format!(
            "it writes rows of its own table {table} other than the one that fired it (its WHERE does not pin every primary-key column to NEW or OLD): SQLite runs it as each row changes, Postgres after the whole statement"
        ))
    }
}

/// `rowid = NEW.rowid` in a write to the trigger's own table, as `key = NEW.key` for every
/// primary-key column: the same row in SQLite, and Postgres has no rowid. Not for OLD in an
/// UPDATE trigger unless the key is the rowid itself (a changed key leaves the rowid as it
/// was, and `key = OLD.key` would find no row).
fn unrowid(table: &str, selection: Option<&Expr>, ctx: &Ctx) -> Result<Option<Expr>, Why> {
    let Some(e) = selection else {
        return Ok(None);
    };
    if !table.eq_ignore_ascii_case(ctx.own) {
        return Ok(Some(e.clone()));
    }
    let is_rowid = |n: &str| {
        ["rowid", "_rowid_", "oid"]
            .iter()
            .any(|r| r.eq_ignore_ascii_case(n))
    };
    if ctx.table.columns.iter().any(|c| is_rowid(&c.name)) {
        return Ok(Some(e.clone()));
    }
    let own_rowid = |e: &Expr| match e {
        Expr::Identifier(id) => is_rowid(&id.value),
        Expr::CompoundIdentifier(p) => {
            p.len() == 2 && p[0].value.eq_ignore_ascii_case(table) && is_rowid(&p[1].value)
        }
        _ => false,
    };
    let record_rowid = |e: &Expr| match e {
        Expr::CompoundIdentifier(p)
            if p.len() == 2
                && is_rowid(&p[1].value)
                && ["NEW", "OLD"]
                    .iter()
                    .any(|r| p[0].value.eq_ignore_ascii_case(r)) =>
        {
            Some(p[0].clone())
        }
        _ => None,
    };
    let swap = |e: &Expr| -> Result<Option<Expr>, Why> {
        let Expr::BinaryOp {
            left,
            op: sqlparser::ast::BinaryOperator::Eq,
            right,
        } = e
        else {
            return Ok(None);
        };
        let record = match (own_rowid(left), own_rowid(right)) {
            (true, _) => record_rowid(right),
            (_, true) => record_rowid(left),
            _ => None,
        };
        let Some(record) = record else {
            return Ok(None);
        };
        if ctx.table.key.is_empty() {
            return Err(format!(
                "it finds its row by rowid, and {table} has no primary key that Postgres could find it by"
            ));
        }
        let alias =
            ctx.table.rowid_alias.as_ref().is_some_and(|a| {
                ctx.table.key.len() == 1 && ctx.table.key[0].eq_ignore_ascii_case(a)
            });
        if record.value.eq_ignore_ascii_case("OLD") && ctx.event == Event::Update && !alias {
            return Err(format!(
                "it finds its row by OLD.rowid: if the UPDATE changed the primary key of {table}, the key no longer finds that row"
            ));
        }
        let terms = ctx.table.key.iter().map(|k| Expr::BinaryOp {
            left: Box::new(Expr::Identifier(sqlparser::ast::Ident::new(k))),
            op: sqlparser::ast::BinaryOperator::Eq,
            right: Box::new(Expr::CompoundIdentifier(vec![
                record.clone(),
                sqlparser::ast::Ident::new(k),
            ])),
        });
        Ok(terms.reduce(|a, b| Expr::BinaryOp {
            left: Box::new(a),
            op: sqlparser::ast::BinaryOperator::And,
            right: Box::new(b),
        }))
    };
    fn walk(e: &Expr, swap: &dyn Fn(&Expr) -> Result<Option<Expr>, Why>) -> Result<Expr, Why> {
        Ok(match e {
            Expr::Nested(inner) => Expr::Nested(Box::new(walk(inner, swap)?)),
            Expr::BinaryOp {
                left,
                op: sqlparser::ast::BinaryOperator::And,
                right,
            } => Expr::BinaryOp {
                left: Box::new(walk(left, swap)?),
                op: sqlparser::ast::BinaryOperator::And,
                right: Box::new(walk(right, swap)?),
            },
            other => swap(other)?.unwrap_or_else(|| other.clone()),
        })
    }
    walk(e, &swap).map(Some)
}

fn and_terms<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::Nested(inner) => and_terms(inner, out),
        Expr::BinaryOp {
            left,
            op: sqlparser::ast::BinaryOperator::And,
            right,
        } => {
            and_terms(left, out);
            and_terms(right, out);
        }
        other => out.push(other),
    }
}

fn target_column<'t>(t: &'t Table, name: &str) -> Result<&'t Column, Why> {
    t.columns
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| format!("no column {name} is moved"))
}

fn last_name(n: &ObjectName) -> String {
    n.0.last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .unwrap_or_default()
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// A dollar-quote tag the body does not contain.
fn dollar_tag(body: &str) -> String {
    (0..)
        .map(|i| {
            if i == 0 {
                "$sqlite2pg$".to_string()
            } else {
                format!("$sqlite2pg{i}$")
            }
        })
        .find(|t| !body.contains(t.as_str()))
        .unwrap_or_default()
}

/// FNV-1a: a stable name for the trigger's running flag (setting names allow no quotes).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Collation;
    use crate::model::PgType;

    fn items() -> Table {
        Table {
            name: "\"public\".\"items\"".into(),
            columns: vec![
                Column::new("id", "INTEGER", PgType::Int8, Collation::Binary),
                Column::new("name", "TEXT", PgType::Text, Collation::Binary),
                Column::new("qty", "INTEGER", PgType::Int8, Collation::Binary),
                Column::new(
                    "updated_at",
                    "DATETIME",
                    PgType::Timestamp { precision: None },
                    Collation::Binary,
                ),
            ],
            key: vec!["id".into()],
            rowid_alias: Some("id".into()),
            lost_defaults: Vec::new(),
        }
    }

    fn audit() -> Table {
        Table {
            name: "\"public\".\"audit\"".into(),
            columns: vec![
                Column::new("item", "INTEGER", PgType::Int8, Collation::Binary),
                Column::new("what", "TEXT", PgType::Text, Collation::Binary),
            ],
            key: Vec::new(),
            rowid_alias: None,
            lost_defaults: vec!["at".into()],
        }
    }

    fn port(sql: &str) -> Result<Ported, Why> {
        let lookup = |n: &str| match n {
            "items" => Some(items()),
            "audit" => Some(audit()),
            _ => None,
        };
        translate_trigger(sql, "\"public\".\"f\"", &lookup)
    }

    #[test]
    fn the_usual_triggers_port() {
        let p = port(
            "CREATE TRIGGER touch AFTER UPDATE OF qty ON items BEGIN
               UPDATE items SET updated_at = datetime('now') WHERE id = NEW.id; END",
        )
        .unwrap();
        assert!(
            p.trigger.starts_with("CREATE TRIGGER \"touch\" AFTER UPDATE OF \"qty\" ON \"public\".\"items\" FOR EACH ROW EXECUTE FUNCTION"),
            "{}",
            p.trigger
        );
        assert!(
            p.function
                .contains("UPDATE \"public\".\"items\" SET \"updated_at\" = "),
            "{}",
            p.function
        );
        assert!(
            p.function.contains("WHERE (\"id\" = NEW.\"id\")")
                || p.function.contains("WHERE \"id\" = NEW.\"id\""),
            "{}",
            p.function
        );
        let p = port(
            "CREATE TRIGGER guard BEFORE INSERT ON items WHEN NEW.qty < 0 BEGIN
               SELECT RAISE(ABORT, 'qty must not be negative'); END",
        )
        .unwrap();
        assert!(
            p.trigger.contains("BEFORE INSERT") && p.trigger.contains("WHEN ("),
            "{}",
            p.trigger
        );
        assert!(
            p.function
                .contains("RAISE EXCEPTION USING MESSAGE = 'qty must not be negative'::text"),
            "{}",
            p.function
        );
        assert!(p.function.contains("RETURN NEW;"), "{}", p.function);
        let p = port(
            "CREATE TRIGGER log AFTER DELETE ON items FOR EACH ROW BEGIN
               INSERT INTO audit (item, what, at) VALUES (OLD.id, 'deleted ' || OLD.name, 1);
               SELECT CASE WHEN OLD.qty > 100 THEN RAISE(ABORT, 'in stock') END; END",
        );
        assert!(p.unwrap_err().contains("no column at is moved"));
    }

    #[test]
    fn what_runs_differently_is_refused_with_the_reason() {
        for (sql, why) in [
            (
                "CREATE TRIGGER a AFTER UPDATE ON items BEGIN UPDATE items SET qty = 0; END",
                "other than the one that fired it",
            ),
            (
                "CREATE TRIGGER a BEFORE UPDATE ON items BEGIN UPDATE items SET qty = 0 WHERE id = NEW.id; END",
                "BEFORE trigger writes its own table",
            ),
            (
                "CREATE TRIGGER a AFTER INSERT ON items BEGIN INSERT INTO audit (item, what) VALUES (NEW.id, 'x'); END",
                "leaves out audit.at",
            ),
            (
                "CREATE TRIGGER a AFTER INSERT ON items BEGIN SELECT RAISE(FAIL, 'no'); END",
                "RAISE(FAIL)",
            ),
            (
                "CREATE TRIGGER a AFTER INSERT ON items BEGIN SELECT RAISE(IGNORE); END",
                "AFTER trigger",
            ),
            (
                "CREATE TRIGGER a BEFORE INSERT ON items BEGIN SELECT RAISE(ABORT, 'x') WHERE NEW.id > 5; END",
                "has not chosen the new row's id",
            ),
            (
                "CREATE TRIGGER a INSTEAD OF INSERT ON v BEGIN SELECT 1; END",
                "not a table sqlite2pg moves",
            ),
            (
                "CREATE TRIGGER a AFTER INSERT ON items BEGIN INSERT OR IGNORE INTO audit VALUES (1, 'x'); END",
                "INSERT OR",
            ),
            (
                "CREATE TRIGGER a AFTER INSERT ON items BEGIN SELECT count(*) FROM audit; END",
                "only SELECT RAISE",
            ),
        ] {
            let got = port(sql).map(|p| p.function).unwrap_err();
            assert!(got.contains(why), "{sql}: {got}");
        }
    }

    #[test]
    fn a_row_found_by_rowid_is_found_by_its_key() {
        let p = port(
            "CREATE TRIGGER t AFTER UPDATE ON items BEGIN
               UPDATE items SET updated_at = DATETIME('NOW') WHERE rowid = new.rowid; END",
        )
        .unwrap();
        assert!(
            p.function.contains("WHERE \"id\" = NEW.\"id\""),
            "{}",
            p.function
        );
        let mut keyed = items();
        keyed.rowid_alias = None;
        keyed.key = vec!["name".into(), "qty".into()];
        let lookup = |_: &str| Some(keyed.clone());
        let p = translate_trigger(
            "CREATE TRIGGER t AFTER INSERT ON items BEGIN
               UPDATE items SET updated_at = DATETIME('NOW') WHERE rowid = NEW.rowid; END",
            "f",
            &lookup,
        )
        .unwrap();
        assert!(
            p.function
                .contains("\"name\" = NEW.\"name\" AND \"qty\" = NEW.\"qty\""),
            "{}",
            p.function
        );
        let e = translate_trigger(
            "CREATE TRIGGER t AFTER UPDATE ON items BEGIN
               UPDATE items SET updated_at = NULL WHERE rowid = OLD.rowid; END",
            "f",
            &lookup,
        )
        .unwrap_err();
        assert!(e.contains("OLD.rowid"), "{e}");
        let e = port(
            "CREATE TRIGGER t AFTER UPDATE ON items BEGIN
               UPDATE items SET id = NEW.id + 1 WHERE id = NEW.id; END",
        )
        .unwrap_err();
        assert!(e.contains("key column id"), "{e}");
    }

    #[test]
    fn a_dollar_quote_in_the_body_gets_another_tag() {
        assert_eq!(dollar_tag("x"), "$sqlite2pg$");
        assert_eq!(dollar_tag("a $sqlite2pg$ b"), "$sqlite2pg1$");
    }
}
