//! SQLite views in Postgres' SQL: the SELECT translated clause by clause under the rules of
//! the expressions (exact or refused), with what SQLite does implicitly made explicit: text
//! ordered byte by byte, NULLs sorting first, output columns named as SQLite names them.

use sqlparser::ast::{
    Distinct, GroupByExpr, JoinConstraint, JoinOperator, LimitClause, ObjectName, OrderByKind,
    OrderBySort, Query, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement,
    TableFactor, TableWithJoins,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

use super::{Collation, Column, Kind, Relation, Scope, T, Why, node};
use crate::model::PgType;
use crate::model::quote_ident;

/// A translated view.
#[derive(Debug, Clone)]
pub struct View {
    /// Its SELECT in Postgres' SQL.
    pub select: String,
    /// Its columns, as views that read it see them.
    pub columns: Vec<Column>,
}

/// A table or view a view may read: its Postgres name (qualified, quoted) and columns.
pub type Source = (String, Vec<Column>);

/// The query of a CREATE VIEW statement.
fn query_of(create: &str) -> Result<Query, Why> {
    match Parser::parse_sql(&SQLiteDialect {}, create).as_deref() {
        Ok([Statement::CreateView(v)]) => Ok((*v.query).clone()),
        Ok(_) => Err("not one CREATE VIEW statement".into()),
        Err(e) => Err(format!("cannot parse it: {e}")),
    }
}

/// The tables and views a CREATE VIEW reads in its FROM clauses (SQLite names), for ordering
/// views after the views they read.
pub fn reads(create: &str) -> Vec<String> {
    let Ok(q) = query_of(create) else {
        return Vec::new();
    };
    let SetExpr::Select(select) = q.body.as_ref() else {
        return Vec::new();
    };
    select
        .from
        .iter()
        .flat_map(|twj| std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)))
        .filter_map(|f| match f {
            TableFactor::Table { name, .. } => last_part(name),
            _ => None,
        })
        .collect()
}

fn last_part(name: &ObjectName) -> Option<String> {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
}

/// Translates the view `create` (its CREATE VIEW as SQLite holds it) whose columns SQLite
/// names `names` (`PRAGMA table_info`); `lookup` finds what it reads by SQLite name.
pub fn translate(
    create: &str,
    names: &[String],
    lookup: &dyn Fn(&str) -> Option<Source>,
) -> Result<View, Why> {
    let q = query_of(create)?;
    if q.with.is_some() || q.fetch.is_some() || !q.locks.is_empty() {
        return Err("a WITH, FETCH or locking clause is not translated".into());
    }
    let SetExpr::Select(select) = q.body.as_ref() else {
        return Err(
            "a compound SELECT (UNION, INTERSECT, EXCEPT) or VALUES is not translated".into(),
        );
    };
    if select.having.is_some()
        && matches!(select.group_by, GroupByExpr::Expressions(ref g, _) if g.is_empty())
    {
        return Err("HAVING without GROUP BY is not translated".into());
    }
    let mut scope = Scope::default();
    let mut from = Vec::new();
    for twj in &select.from {
        from.push(from_item(twj, &mut scope, lookup)?);
    }
    if from.is_empty() {
        return Err("a SELECT without FROM is not translated".into());
    }
    // Join conditions may name every relation in scope; Postgres checks the order itself.
    let from_sql = from
        .into_iter()
        .map(|(first, joins)| {
            let mut sql = first;
            for (kind, rel, on) in joins {
                sql.push_str(&format!(" {kind} {rel}"));
                if let Some(on) = on {
                    let cond = node(on, &scope)?.cond()?;
                    sql.push_str(&format!(" ON {cond}"));
                }
            }
            Ok(sql)
        })
        .collect::<Result<Vec<String>, Why>>()?
        .join(", ");

    let mut items: Vec<T> = Vec::new();
    // Output aliases, by item: ORDER BY names them before any table's column.
    let mut aliases: Vec<(String, usize)> = Vec::new();
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => items.push(node(e, &scope)?),
            SelectItem::ExprWithAlias { expr: e, alias } => {
                aliases.push((alias.value.clone(), items.len()));
                items.push(node(e, &scope)?)
            }
            SelectItem::Wildcard(_) => {
                for r in &scope.relations {
                    items.extend(all_columns(r, &scope)?);
                }
            }
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(n), _) => {
                let name = last_part(n).unwrap_or_default();
                let r = scope
                    .relations
                    .iter()
                    .find(|r| r.name.eq_ignore_ascii_case(&name))
                    .ok_or_else(|| format!("{n}.* names no table read here"))?;
                items.extend(all_columns(r, &scope)?);
            }
            other => return Err(format!("the select item {other} is not translated")),
        }
    }
    if items.len() != names.len() {
        return Err(format!(
            "it has {} columns in SQLite and {} here",
            names.len(),
            items.len()
        ));
    }
    let distinct = match &select.distinct {
        None | Some(Distinct::All) => false,
        Some(Distinct::Distinct) => true,
        Some(Distinct::On(_)) => return Err("DISTINCT ON is not translated".into()),
    };
    if distinct {
        for t in &items {
            equality_as_sqlite(t, "DISTINCT")?;
        }
    }
    let mut selected: Vec<String> = items.iter().map(|t| t.clone().number().sql).collect();
    let mut sql = format!(" FROM {from_sql}");
    if let Some(w) = &select.selection {
        sql.push_str(&format!(" WHERE {}", node(w, &scope)?.cond()?));
    }
    match &select.group_by {
        GroupByExpr::Expressions(exprs, mods) if mods.is_empty() => {
            if !exprs.is_empty() {
                let mut keys = Vec::new();
                for g in exprs {
                    let t = node(g, &scope)?;
                    if t.literal.is_some() {
                        return Err("GROUP BY a column number is not translated".into());
                    }
                    equality_as_sqlite(&t, "GROUP BY")?;
                    keys.push(t.number().sql);
                }
                sql.push_str(&format!(" GROUP BY {}", keys.join(", ")));
            }
        }
        other => return Err(format!("{other} is not translated")),
    }
    if let Some(h) = &select.having {
        sql.push_str(&format!(" HAVING {}", node(h, &scope)?.cond()?));
    }
    let ordered = match &q.order_by {
        None => false,
        Some(o) => {
            let OrderByKind::Expressions(terms) = &o.kind else {
                return Err("ORDER BY ALL is not translated".into());
            };
            let mut keys = Vec::new();
            for term in terms {
                let alias = match &term.expr {
                    sqlparser::ast::Expr::Identifier(id) => aliases
                        .iter()
                        .find(|(a, _)| a.eq_ignore_ascii_case(&id.value))
                        .map(|(_, i)| items[*i].clone()),
                    _ => None,
                };
                let t = match alias {
                    Some(t) => t,
                    None => node(&term.expr, &scope)?,
                };
                if t.literal.is_some() {
                    return Err("ORDER BY a column number is not translated".into());
                }
                if distinct {
                    // Postgres sorts a DISTINCT by selected expressions only: the one ordered
                    // by is selected in its byte order (the values are the same).
                    let i = items
                        .iter()
                        .position(|it| it.sql == t.sql)
                        .ok_or("ORDER BY a column not selected, with DISTINCT")?;
                    if t.kind == Kind::Text {
                        if t.coll.is_some_and(|(c, _)| c != Collation::Binary) {
                            return Err(
                                "DISTINCT ordered by text under NOCASE or RTRIM".to_string()
                            );
                        }
                        selected[i] = sort_key(&t);
                    }
                }
                if t.kind == Kind::Opaque {
                    return Err(format!(
                        "ORDER BY {}: SQLite orders its text, Postgres its values",
                        Kind::Opaque.name()
                    ));
                }
                let desc = matches!(term.options.sort, Some(OrderBySort::Desc));
                // SQLite sorts NULLs first ascending, last descending, unless told.
                let nulls_first = term.options.nulls_first.unwrap_or(!desc);
                keys.push(format!(
                    "{}{}{}",
                    sort_key(&t),
                    if desc { " DESC" } else { "" },
                    if nulls_first {
                        " NULLS FIRST"
                    } else {
                        " NULLS LAST"
                    }
                ));
            }
            sql.push_str(&format!(" ORDER BY {}", keys.join(", ")));
            true
        }
    };
    if let Some(l) = &q.limit_clause {
        let LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        } = l
        else {
            return Err("LIMIT offset, count is not translated".into());
        };
        if !ordered || !limit_by.is_empty() {
            return Err("LIMIT without ORDER BY picks rows in SQLite's own order".into());
        }
        let int = |e: &sqlparser::ast::Expr| {
            let t = node(e, &scope)?;
            match (&t.literal, t.kind) {
                (Some(_), Kind::Int) => Ok(t.sql),
                _ => Err(format!("LIMIT {e} is not an integer literal")),
            }
        };
        if let Some(l) = limit {
            sql.push_str(&format!(" LIMIT {}", int(l)?));
        }
        if let Some(o) = offset {
            sql.push_str(&format!(" OFFSET {}", int(&o.value)?));
        }
    }
    let sql = format!(
        "SELECT {}{}{sql}",
        if distinct { "DISTINCT " } else { "" },
        selected.join(", ")
    );
    let columns = items
        .iter()
        .zip(names)
        .map(|(t, name)| {
            use crate::typemap::Affinity as A;
            let ty = match t.kind {
                Kind::Int | Kind::Cond => PgType::Int8,
                Kind::Real => PgType::Float8,
                Kind::Numeric => PgType::Numeric { typmod: None },
                Kind::Text | Kind::Null => PgType::Text,
                Kind::Blob => PgType::Bytea,
                Kind::Opaque => t.opaque.clone().unwrap_or(PgType::Text),
            };
            // A view's column has the affinity of the column it shows, and none for an
            // expression (declared BLOB: no conversion).
            let decl_type = match t.affinity {
                Some(A::Integer) => "INTEGER",
                Some(A::Text) => "TEXT",
                Some(A::Real) => "REAL",
                Some(A::Numeric) => "NUMERIC",
                Some(A::Blob) | None => "BLOB",
            };
            Column {
                name: name.clone(),
                target: name.clone(),
                ty,
                decl_type: decl_type.to_string(),
                collation: t.coll.map(|(c, _)| c).unwrap_or(Collation::Binary),
            }
        })
        .collect();
    Ok(View {
        select: sql,
        columns,
    })
}

/// A join: its keyword, the relation's SQL, and its ON condition.
type JoinSql<'a> = (&'static str, String, Option<&'a sqlparser::ast::Expr>);

/// One FROM item: its relation and joins, each added to `scope`.
fn from_item<'a>(
    twj: &'a TableWithJoins,
    scope: &mut Scope,
    lookup: &dyn Fn(&str) -> Option<Source>,
) -> Result<(String, Vec<JoinSql<'a>>), Why> {
    let first = relation(&twj.relation, scope, lookup)?;
    let mut joins = Vec::new();
    for j in &twj.joins {
        let (kind, on) = match &j.join_operator {
            JoinOperator::Join(c) | JoinOperator::Inner(c) => ("JOIN", c),
            JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => ("LEFT JOIN", c),
            JoinOperator::CrossJoin(c) => ("CROSS JOIN", c),
            other => return Err(format!("the join {other:?} is not translated")),
        };
        let on = match on {
            JoinConstraint::On(e) => Some(e),
            JoinConstraint::None if kind == "CROSS JOIN" => None,
            _ => return Err("a join with USING or NATURAL is not translated".into()),
        };
        let kind = if on.is_none() { "CROSS JOIN" } else { kind };
        joins.push((kind, relation(&j.relation, scope, lookup)?, on));
    }
    Ok((first, joins))
}

fn relation(
    f: &TableFactor,
    scope: &mut Scope,
    lookup: &dyn Fn(&str) -> Option<Source>,
) -> Result<String, Why> {
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = f
    else {
        return Err(format!(
            "reading {f} is not translated (subqueries, functions)"
        ));
    };
    if name.0.len() != 1 {
        return Err(format!("{name} names another schema"));
    }
    let table = last_part(name).unwrap_or_default();
    let (pg, columns) = lookup(&table).ok_or_else(|| {
        format!(
            "it reads {table}, which is neither a table sqlite2pg copies nor a view it translates"
        )
    })?;
    if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
        return Err("a table alias with column names is not translated".into());
    }
    let as_name = alias
        .as_ref()
        .map(|a| a.name.value.clone())
        .unwrap_or(table);
    if scope
        .relations
        .iter()
        .any(|r| r.name.eq_ignore_ascii_case(&as_name))
    {
        return Err(format!("{as_name} is read twice under one name"));
    }
    let sql = format!("{pg} AS {}", quote_ident(&as_name));
    scope.relations.push(Relation {
        name: as_name.clone(),
        qualifier: Some(as_name),
        columns,
        record: false,
    });
    Ok(sql)
}

/// Every column of `r`, as `*` expands it.
fn all_columns(r: &Relation, scope: &Scope) -> Result<Vec<T>, Why> {
    r.columns
        .iter()
        .map(|c| super::column(Some(&r.name), &c.name, None, scope))
        .collect()
}

/// DISTINCT and GROUP BY compare by equality: the same in both for every class, but text
/// under NOCASE or RTRIM groups spellings SQLite keeps apart from Postgres.
fn equality_as_sqlite(t: &T, what: &str) -> Result<(), Why> {
    if t.kind == Kind::Opaque {
        return Err(format!(
            "{what} on {}: it is text in SQLite and another type in Postgres",
            Kind::Opaque.name()
        ));
    }
    match t.coll {
        Some((c, _)) if t.kind == Kind::Text && c != Collation::Binary => Err(format!(
            "{what} on text under NOCASE or RTRIM: SQLite groups spellings Postgres keeps apart"
        )),
        _ => Ok(()),
    }
}

/// How ORDER BY sorts `t` in Postgres as SQLite does.
fn sort_key(t: &T) -> String {
    let t = t.clone().number();
    match t.kind {
        Kind::Text => {
            let c = t.coll.map(|(c, _)| c).unwrap_or(Collation::Binary);
            format!("{} COLLATE \"C\"", c.key(&t.sql))
        }
        _ => t.sql,
    }
}
