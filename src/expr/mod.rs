//! SQLite expressions in Postgres' SQL: a translation that gives the same result as SQLite for
//! every row, or the reason there is none. Never a lookalike: where SQLite's rules (type
//! affinity, `'a' + 'b'` = 0, NULL on division by zero, 15-digit REAL text) and Postgres' part,
//! the expression is refused with that reason, and the caller reports it.
//!
//! Expressions are parsed with `sqlparser`'s SQLite dialect and typed bottom-up: every value
//! has the storage class SQLite gives it, known from the column's type in the plan (values that
//! do not fit their column are reported by `check` before the move).

use sqlparser::ast::{
    BinaryOperator, CastKind, DataType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, UnaryOperator, Value,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::model::{Collation, PgType, quote_ident};

pub mod trigger;
pub mod view;

/// Why an expression has no exact translation.
pub type Why = String;

/// A column an expression may name.
#[derive(Debug, Clone)]
pub struct Column {
    /// Its name in SQLite.
    pub name: String,
    /// Its name in Postgres.
    pub target: String,
    /// Its Postgres type.
    pub ty: PgType,
    /// Its SQLite declared type (no declared type: values of any class).
    pub decl_type: String,
    /// Its declared collation.
    pub collation: Collation,
}

impl Column {
    /// A column named alike in both databases.
    pub fn new(name: &str, decl_type: &str, ty: PgType, collation: Collation) -> Column {
        Column {
            name: name.to_string(),
            target: name.to_string(),
            ty,
            decl_type: decl_type.to_string(),
            collation,
        }
    }
}

/// A table (or view) an expression may read.
#[derive(Debug, Clone, Default)]
pub struct Relation {
    /// The name the SQL calls it by (its alias, if it has one).
    pub name: String,
    /// How Postgres' SQL qualifies its columns; `None` in a one-table expression (a CHECK).
    pub qualifier: Option<String>,
    /// Its columns.
    pub columns: Vec<Column>,
    /// A trigger's NEW or OLD row: named only with its qualifier, which Postgres' SQL writes
    /// as the PL/pgSQL record of that name.
    pub record: bool,
}

/// What an expression may name: one table's columns (a CHECK), several (a view), or none
/// (a DEFAULT).
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The relations, in FROM order.
    pub relations: Vec<Relation>,
}

impl Scope {
    /// The columns of one table, named unqualified in Postgres' SQL.
    pub fn table(name: &str, columns: Vec<Column>) -> Scope {
        Scope {
            relations: vec![Relation {
                name: name.to_string(),
                qualifier: None,
                columns,
                record: false,
            }],
        }
    }
}

/// The storage class of an expression's value, as SQLite has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// INTEGER.
    Int,
    /// REAL.
    Real,
    /// A NUMERIC-affinity column: INTEGER or REAL, row by row (numeric in Postgres).
    Numeric,
    /// TEXT.
    Text,
    /// BLOB.
    Blob,
    /// A truth value: a Postgres boolean, SQLite's 0 or 1.
    Cond,
    /// The NULL literal.
    Null,
    /// A date, time, JSON, UUID or enum column: text in SQLite, another type in Postgres. It
    /// can be selected and tested for NULL, nothing else.
    Opaque,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Int => "an integer",
            Kind::Real => "a REAL",
            Kind::Numeric => "a NUMERIC column",
            Kind::Text => "text",
            Kind::Blob => "a BLOB",
            Kind::Cond => "a truth value",
            Kind::Null => "NULL",
            Kind::Opaque => "a date, time, JSON or UUID column",
        }
    }

    fn is_number(self) -> bool {
        matches!(self, Kind::Int | Kind::Real | Kind::Numeric)
    }
}

/// A translated expression.
#[derive(Debug, Clone)]
pub struct Translated {
    /// Postgres SQL.
    pub sql: String,
    /// SQLite's storage class of its value.
    pub kind: Kind,
}

/// One translated node, with what later rules need to know about it.
#[derive(Debug, Clone)]
struct T {
    sql: String,
    kind: Kind,
    /// The collation it carries: (collation, given by a COLLATE operator).
    coll: Option<(Collation, bool)>,
    /// An integer Postgres holds in 64 bits (a bigint column, an arithmetic result).
    wide: bool,
    /// A numeric literal as written.
    literal: Option<String>,
    /// Text produced by a date function in one of SQLite's canonical layouts.
    date_form: bool,
    /// The affinity of the column it names (SQLite applies it to a literal compared with it).
    affinity: Option<crate::typemap::Affinity>,
    /// A text literal's value.
    text: Option<String>,
    /// The Postgres type of an `Opaque` column.
    opaque: Option<PgType>,
}

impl T {
    fn new(sql: String, kind: Kind) -> T {
        T {
            sql,
            kind,
            coll: None,
            wide: false,
            literal: None,
            date_form: false,
            affinity: None,
            text: None,
            opaque: None,
        }
    }

    /// As an integer operand (a truth value is SQLite's 0 or 1).
    fn number(self) -> T {
        if self.kind == Kind::Cond {
            T::new(format!("({})::int", self.sql), Kind::Int)
        } else {
            self
        }
    }

    /// As a Postgres boolean (SQLite: true when not zero).
    fn cond(self) -> Result<String, Why> {
        match self.kind {
            Kind::Cond => Ok(self.sql),
            Kind::Int | Kind::Real | Kind::Numeric => Ok(format!("({} <> 0)", self.sql)),
            Kind::Null => Ok("NULL::boolean".into()),
            Kind::Text => Err(format!(
                "{} is text used as a truth value: SQLite reads the number it starts with ('1abc' is true), Postgres has no such rule",
                self.sql
            )),
            Kind::Blob | Kind::Opaque => Err(format!("{} used as a truth value", self.kind.name())),
        }
    }
}

/// Parses one SQLite expression.
pub fn parse(sql: &str) -> Result<Expr, Why> {
    let dialect = SQLiteDialect {};
    let mut p = Parser::new(&dialect)
        .try_with_sql(sql)
        .map_err(|e| format!("cannot parse {sql}: {e}"))?;
    let e = p
        .parse_expr()
        .map_err(|e| format!("cannot parse {sql}: {e}"))?;
    if p.peek_token().token != Token::EOF {
        return Err(format!("cannot parse {sql}: text after the expression"));
    }
    Ok(e)
}

/// Translates an expression.
pub fn translate(e: &Expr, scope: &Scope) -> Result<Translated, Why> {
    let t = node(e, scope)?;
    Ok(Translated {
        sql: t.sql,
        kind: t.kind,
    })
}

/// Translates a condition (a CHECK, a partial index's WHERE): a Postgres boolean that is true,
/// false or NULL where SQLite's is non-zero, zero or NULL.
pub fn condition(e: &Expr, scope: &Scope) -> Result<String, Why> {
    node(e, scope)?.cond()
}

/// Translates one term of a UNIQUE index on an expression (`lower(email)`, `trim(code) COLLATE
/// NOCASE`): Postgres SQL whose values are equal exactly where SQLite's index finds the term's
/// values equal. Only the term's own COLLATE applies (a function's result has none), folded
/// in; a term whose values may be of several storage classes has no such translation.
pub fn index_term(sql: &str, scope: &Scope) -> Result<String, Why> {
    let e = parse(sql)?;
    let (inner, collation) = match &e {
        Expr::Collate { expr, collation } => {
            let name = collation.to_string();
            let c = Collation::named(&name)
                .ok_or_else(|| format!("collation {name} is not one of SQLite's own"))?;
            (expr.as_ref(), c)
        }
        other => (other, Collation::Binary),
    };
    let t = node(inner, scope)?;
    match t.kind {
        Kind::Text => Ok(collation.key(&format!("({})", t.sql))),
        Kind::Int => Ok(t.sql),
        other => Err(format!(
            "the term {sql} is {}: its values compare in SQLite across storage classes, as no Postgres type does",
            other.name()
        )),
    }
}

/// Translates an expression whose value is stored in a column of type `ty` (a DEFAULT): the
/// value Postgres stores is the one the forward conversion makes of SQLite's.
pub fn value_for(e: &Expr, scope: &Scope, ty: &PgType) -> Result<String, Why> {
    let t = node(e, scope)?;
    let text_ty = matches!(
        ty,
        PgType::Text | PgType::Varchar { .. } | PgType::Bpchar { .. }
    );
    let ok = match (t.kind, ty) {
        (Kind::Null, _) => true,
        (Kind::Int | Kind::Cond, PgType::Int2 | PgType::Int4 | PgType::Int8) => true,
        (Kind::Int | Kind::Cond | Kind::Real, PgType::Float8) => true,
        (Kind::Int | Kind::Cond, PgType::Numeric { .. }) => true,
        (Kind::Cond, PgType::Bool) => true,
        (Kind::Text, _) if text_ty => true,
        (Kind::Int | Kind::Cond, _) if text_ty => {
            return Ok(format!("({})::text", t.number().sql));
        }
        (Kind::Text, PgType::Timestamp { .. } | PgType::Date | PgType::Time { .. })
            if t.date_form =>
        {
            return Ok(format!("({})::{}", t.sql, ty.sql()));
        }
        (Kind::Blob, PgType::Bytea) => true,
        // A date, JSON or UUID column copied as it is: SQLite's text converts to the value.
        (Kind::Opaque, _) => t.opaque.as_ref() == Some(ty),
        _ => false,
    };
    if !ok {
        return Err(format!(
            "its value is {} and the column is {}: the value Postgres would store is not the one SQLite stores",
            t.kind.name(),
            ty.sql()
        ));
    }
    Ok(t.number().sql)
}

fn node(e: &Expr, s: &Scope) -> Result<T, Why> {
    match e {
        Expr::Nested(inner) => {
            let mut t = node(inner, s)?;
            t.sql = format!("({})", t.sql);
            Ok(t)
        }
        Expr::Value(v) => literal(&v.value),
        Expr::Identifier(id) => {
            if id.quote_style == Some('\'') {
                return Ok(text_literal(&id.value));
            }
            column(None, &id.value, id.quote_style, s)
        }
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [table, col] => column(Some(&table.value), &col.value, col.quote_style, s),
            _ => Err(format!("{e} names a column of another schema")),
        },
        Expr::UnaryOp { op, expr } => {
            let t = node(expr, s)?;
            match op {
                UnaryOperator::Not => Ok(T::new(format!("NOT {}", t.cond()?), Kind::Cond)),
                UnaryOperator::Minus | UnaryOperator::Plus => {
                    let t = t.number();
                    if !t.kind.is_number() && t.kind != Kind::Null {
                        return Err(format!(
                            "{e}: the sign of {}: SQLite reads a number out of it, Postgres does not",
                            t.kind.name()
                        ));
                    }
                    let sign = if *op == UnaryOperator::Minus {
                        "-"
                    } else {
                        "+"
                    };
                    // A signed column has no affinity any more.
                    Ok(T {
                        sql: format!("{sign}{}", t.sql),
                        literal: t.literal.map(|l| format!("{sign}{l}")),
                        affinity: None,
                        ..t
                    })
                }
                _ => Err(format!("operator {op} in {e} is not translated")),
            }
        }
        Expr::BinaryOp { left, op, right } => binary(e, node(left, s)?, op, node(right, s)?),
        Expr::IsNull(x) => Ok(T::new(format!("{} IS NULL", node(x, s)?.sql), Kind::Cond)),
        Expr::IsNotNull(x) => Ok(T::new(
            format!("{} IS NOT NULL", node(x, s)?.sql),
            Kind::Cond,
        )),
        Expr::IsDistinctFrom(a, b) => binary(e, node(a, s)?, &BinaryOperator::IsNot, node(b, s)?),
        Expr::IsNotDistinctFrom(a, b) => binary(e, node(a, s)?, &BinaryOperator::Is, node(b, s)?),
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            // SQLite: `x BETWEEN a AND b` is `x >= a AND x <= b`.
            let x = node(expr, s)?;
            let lo = compare(e, x.clone(), ">=", node(low, s)?)?;
            let hi = compare(e, x, "<=", node(high, s)?)?;
            let both = format!("({} AND {})", lo.sql, hi.sql);
            Ok(T::new(
                if *negated {
                    format!("NOT {both}")
                } else {
                    both
                },
                Kind::Cond,
            ))
        }
        Expr::In {
            expr,
            target: sqlparser::ast::InTarget::List(list),
            negated,
            ..
        } => {
            if list.is_empty() {
                return Err(format!("{e}: an empty IN list"));
            }
            let x = node(expr, s)?;
            let mut terms = Vec::new();
            for item in list {
                terms.push(compare(e, x.clone(), "=", node(item, s)?)?.sql);
            }
            // `x IN (a, b)` is NULL when x is NULL or no term matched and one was NULL, as an OR.
            let any = format!("({})", terms.join(" OR "));
            Ok(T::new(
                if *negated { format!("NOT {any}") } else { any },
                Kind::Cond,
            ))
        }
        Expr::Like {
            negated,
            any: false,
            expr,
            pattern,
            escape_char,
        } => like(e, s, *negated, expr, pattern, escape_char.as_deref()),
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => case(e, s, operand.as_deref(), conditions, else_result.as_deref()),
        Expr::Collate { expr, collation } => {
            let name = collation.to_string();
            let c = Collation::named(&name)
                .ok_or_else(|| format!("collation {name} is not one of SQLite's own"))?;
            let mut t = node(expr, s)?;
            if t.kind != Kind::Text && t.kind != Kind::Null {
                // A collation changes only how text compares.
                return Ok(t);
            }
            t.coll = Some((c, true));
            Ok(t)
        }
        Expr::Cast {
            kind: CastKind::Cast,
            expr,
            data_type,
            ..
        } => cast(e, node(expr, s)?, data_type),
        Expr::Function(f) => function(e, f, s),
        Expr::Trim {
            trim_where: None,
            trim_what: None,
            expr,
            trim_characters,
        } => {
            let mut args = vec![node(expr, s)?];
            for c in trim_characters.iter().flatten() {
                args.push(node(c, s)?);
            }
            trim(e, "btrim", args)
        }
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            let mut args = vec![node(expr, s)?];
            if let Some(f) = substring_from {
                args.push(node(f, s)?);
            }
            if let Some(f) = substring_for {
                args.push(node(f, s)?);
            }
            substr(e, args)
        }
        _ => Err(format!("{e} is not translated")),
    }
}

fn literal(v: &Value) -> Result<T, Why> {
    match v {
        Value::Null => Ok(T::new("NULL".into(), Kind::Null)),
        Value::Boolean(b) => Ok(T::new(if *b { "1" } else { "0" }.into(), Kind::Int)),
        Value::SingleQuotedString(s) => Ok(text_literal(s)),
        Value::HexStringLiteral(h) => Ok(T::new(format!("'\\x{h}'::bytea"), Kind::Blob)),
        Value::Number(n, _) => number(n),
        other => Err(format!("the literal {other} is not translated")),
    }
}

fn text_literal(s: &str) -> T {
    let mut t = T::new(format!("'{}'::text", s.replace('\'', "''")), Kind::Text);
    t.text = Some(s.to_string());
    t
}

fn number(n: &str) -> Result<T, Why> {
    if n.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = n.parse::<i64>() {
            let mut t = T::new(i.to_string(), Kind::Int);
            // Postgres types a small literal as a 32-bit integer; arithmetic widens it.
            t.wide = i > i64::from(i32::MAX);
            if t.wide {
                t.sql = format!("{i}::int8");
            }
            t.literal = Some(n.to_string());
            return Ok(t);
        }
        return Err(format!(
            "{n} does not fit 64 bits: SQLite makes it a REAL, Postgres a numeric"
        ));
    }
    if n.starts_with("0x") || n.starts_with("0X") {
        return Err(format!("the hexadecimal literal {n} is not translated"));
    }
    let f: f64 = n
        .parse()
        .map_err(|_| format!("cannot read the number {n}"))?;
    if !f.is_finite() {
        return Err(format!("{n} is not a finite REAL"));
    }
    let mut t = T::new(format!("'{f:?}'::float8"), Kind::Real);
    t.literal = Some(n.to_string());
    Ok(t)
}

fn column(table: Option<&str>, name: &str, quote: Option<char>, s: &Scope) -> Result<T, Why> {
    let mut found = s
        .relations
        .iter()
        .filter(|r| match table {
            Some(t) => r.name.eq_ignore_ascii_case(t),
            None => !r.record,
        })
        .flat_map(|r| {
            r.columns
                .iter()
                .filter(|c| c.name.eq_ignore_ascii_case(name))
                .map(move |c| (r, c))
        });
    let Some((relation, c)) = found.next() else {
        return Err(if let Some(t) = table {
            format!("{t}.{name} names no column of the tables read here")
        } else if quote == Some('"') {
            format!(
                "\"{name}\" names no column: SQLite reads it as the string '{name}', Postgres as a column"
            )
        } else if s.relations.iter().all(|r| r.columns.is_empty()) {
            format!("{name} is not a value")
        } else {
            format!("no column is named {name}")
        });
    };
    if found.next().is_some() {
        return Err(format!("{name} names a column of more than one table"));
    }
    if c.decl_type.trim().is_empty() {
        return Err(format!(
            "column {} has no declared type: its values are of any class in SQLite and text in Postgres",
            c.name
        ));
    }
    let q = match &relation.qualifier {
        Some(r) if relation.record => format!("{r}.{}", quote_ident(&c.target)),
        Some(r) => format!("{}.{}", quote_ident(r), quote_ident(&c.target)),
        None => quote_ident(&c.target),
    };
    let (sql, kind, wide) = match &c.ty {
        PgType::Int8 => (q, Kind::Int, true),
        PgType::Int2 | PgType::Int4 => (q, Kind::Int, false),
        PgType::Bool => (format!("({q})::int"), Kind::Int, false),
        PgType::Float8 => (q, Kind::Real, false),
        PgType::Numeric { .. } => (q, Kind::Numeric, false),
        PgType::Text | PgType::Varchar { .. } | PgType::Bpchar { .. } => (q, Kind::Text, false),
        PgType::Bytea => (q, Kind::Blob, false),
        PgType::Date
        | PgType::Time { .. }
        | PgType::Timestamp { .. }
        | PgType::Timestamptz { .. }
        | PgType::Json
        | PgType::Jsonb
        | PgType::Uuid
        | PgType::Interval
        | PgType::Enum { .. } => (q, Kind::Opaque, false),
        other => {
            return Err(format!(
                "column {} is {} in Postgres, which sqlite2pg does not write",
                c.name,
                other.sql()
            ));
        }
    };
    let mut t = T::new(sql, kind);
    t.wide = wide;
    t.affinity = Some(crate::typemap::affinity(&c.decl_type));
    if kind == Kind::Opaque {
        t.opaque = Some(c.ty.clone());
    }
    if kind == Kind::Text {
        t.coll = Some((c.collation, false));
    }
    Ok(t)
}

/// The collation a comparison of `a` and `b` uses: SQLite's rules (an explicit COLLATE on the
/// left, then on the right, then a column's own, left first).
fn collation_of(a: &T, b: &T) -> Collation {
    let explicit = |t: &T| t.coll.filter(|(_, e)| *e).map(|(c, _)| c);
    let implicit = |t: &T| t.coll.map(|(c, _)| c);
    explicit(a)
        .or(explicit(b))
        .or(implicit(a))
        .or(implicit(b))
        .unwrap_or(Collation::Binary)
}

/// Whether a REAL literal with this many significant digits compares with an exact decimal as
/// its double does (any decimal of 15 digits or fewer survives the trip through a double).
fn short_decimal(lit: &str) -> bool {
    let mantissa = lit
        .trim_start_matches(['-', '+'])
        .split(['e', 'E'])
        .next()
        .unwrap_or("");
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    digits.trim_start_matches('0').trim_end_matches('0').len() <= 15
}

/// A literal compared with a column, as SQLite converts it by the column's affinity first:
/// TEXT affinity makes the integer 0 the text '0', a numeric one makes the text '5' the
/// integer 5 (other texts stay text, which no exact translation follows).
fn with_affinity(lit: T, column: &T) -> T {
    use crate::typemap::Affinity as A;
    match (column.affinity, lit.kind, &lit.literal, &lit.text) {
        (Some(A::Text), Kind::Int, Some(l), _) if lit.affinity.is_none() => {
            // SQLite prints the integer in plain decimal.
            match l.parse::<i64>() {
                Ok(v) => text_literal(&v.to_string()),
                Err(_) => lit,
            }
        }
        (Some(A::Integer | A::Real | A::Numeric), Kind::Text, _, Some(v))
            if lit.affinity.is_none() =>
        {
            match number(v) {
                Ok(n) if n.kind == Kind::Int && !v.starts_with('+') => n,
                _ => lit,
            }
        }
        _ => lit,
    }
}

fn compare(e: &Expr, a: T, op: &str, b: T) -> Result<T, Why> {
    let (a, b) = (a.number(), b.number());
    let b = with_affinity(b, &a);
    let a = with_affinity(a, &b);
    let cmp = |x: &str, y: &str| Ok(T::new(format!("{x} {op} {y}"), Kind::Cond));
    match (a.kind, b.kind) {
        (Kind::Null, _) | (_, Kind::Null) => cmp(&a.sql, &b.sql),
        (Kind::Int, Kind::Int) | (Kind::Real, Kind::Real) | (Kind::Numeric, Kind::Numeric) => {
            cmp(&a.sql, &b.sql)
        }
        (Kind::Numeric, Kind::Int) | (Kind::Int, Kind::Numeric) => cmp(&a.sql, &b.sql),
        // An integer and a REAL: SQLite compares them exactly. A short REAL literal written as
        // an exact decimal does too; Postgres' double comparison would round the integer.
        (Kind::Int | Kind::Numeric, Kind::Real) | (Kind::Real, Kind::Int | Kind::Numeric) => {
            // SQLite compares an integer with a REAL exactly. A short REAL literal written as
            // an exact decimal does too, and so does a double against a small integer literal.
            let short = |t: &T| {
                t.literal
                    .clone()
                    .filter(|l| t.kind == Kind::Real && short_decimal(l))
            };
            let small = |t: &T| {
                t.kind == Kind::Int
                    && t.literal
                        .as_deref()
                        .and_then(|l| l.parse::<i64>().ok())
                        .is_some_and(|v| v.unsigned_abs() <= 1 << 53)
            };
            if let Some(l) = short(&b) {
                cmp(&a.sql, &l)
            } else if let Some(l) = short(&a) {
                cmp(&l, &b.sql)
            } else if small(&a) || small(&b) {
                cmp(&a.sql, &b.sql)
            } else if a.kind == Kind::Numeric || b.kind == Kind::Numeric {
                Err(format!(
                    "{e} compares a NUMERIC column with a computed REAL: SQLite holds doubles there, Postgres exact decimals"
                ))
            } else {
                Err(format!(
                    "{e} compares an integer with a computed REAL: SQLite compares them exactly, Postgres through a double"
                ))
            }
        }
        (Kind::Text, Kind::Text) => {
            let c = collation_of(&a, &b);
            let (x, y) = (c.key(&a.sql), c.key(&b.sql));
            if op == "=" || op == "<>" {
                cmp(&x, &y)
            } else {
                cmp(&x, &format!("{y} COLLATE \"C\""))
            }
        }
        (Kind::Blob, Kind::Blob) => cmp(&a.sql, &b.sql),
        (Kind::Opaque, _) | (_, Kind::Opaque) => Err(format!(
            "{e} compares {}: it is text in SQLite and another type in Postgres, which compare differently",
            Kind::Opaque.name()
        )),
        (x, y) => Err(format!(
            "{e} compares {} with {}: SQLite converts one by type affinity first, Postgres has no such rule",
            x.name(),
            y.name()
        )),
    }
}

fn binary(e: &Expr, a: T, op: &BinaryOperator, b: T) -> Result<T, Why> {
    use BinaryOperator as B;
    match op {
        B::And | B::Or => Ok(T::new(
            format!(
                "{} {} {}",
                a.cond()?,
                if *op == B::And { "AND" } else { "OR" },
                b.cond()?
            ),
            Kind::Cond,
        )),
        B::Eq => compare(e, a, "=", b),
        B::NotEq => compare(e, a, "<>", b),
        B::Lt => compare(e, a, "<", b),
        B::LtEq => compare(e, a, "<=", b),
        B::Gt => compare(e, a, ">", b),
        B::GtEq => compare(e, a, ">=", b),
        B::Is | B::IsNot => {
            let word = if *op == B::Is {
                "IS NOT DISTINCT FROM"
            } else {
                "IS DISTINCT FROM"
            };
            if b.kind == Kind::Null {
                let not = if *op == B::Is { "" } else { "NOT " };
                return Ok(T::new(format!("{} IS {not}NULL", a.sql), Kind::Cond));
            }
            compare(e, a, word, b)
        }
        B::StringConcat => {
            let text = |t: T| -> Result<String, Why> {
                let t = t.number();
                match t.kind {
                    Kind::Text | Kind::Null => Ok(t.sql),
                    Kind::Int => Ok(format!("({})::text", t.sql)),
                    Kind::Real | Kind::Numeric => Err(format!(
                        "{e} makes text of a REAL: SQLite prints 15 significant digits, Postgres the shortest exact form"
                    )),
                    _ => Err(format!("{e} makes text of {}", t.kind.name())),
                }
            };
            Ok(T::new(format!("{} || {}", text(a)?, text(b)?), Kind::Text))
        }
        B::Plus | B::Minus | B::Multiply | B::Divide | B::Modulo => arithmetic(e, a, op, b),
        B::Glob => glob(e, a, b),
        _ => Err(format!("operator {op} in {e} is not translated")),
    }
}

fn arithmetic(e: &Expr, a: T, op: &sqlparser::ast::BinaryOperator, b: T) -> Result<T, Why> {
    use BinaryOperator as B;
    let (a, b) = (a.number(), b.number());
    for t in [&a, &b] {
        match t.kind {
            Kind::Int | Kind::Real | Kind::Null => {}
            Kind::Numeric => {
                return Err(format!(
                    "{e} computes with a NUMERIC column: SQLite computes in doubles, Postgres in exact decimals"
                ));
            }
            other => {
                return Err(format!(
                    "{e} computes with {}: SQLite reads a number out of it ('a' + 'b' is 0), Postgres does not",
                    other.name()
                ));
            }
        }
    }
    if matches!(op, B::Divide | B::Modulo) {
        // SQLite gives NULL on a zero divisor, Postgres an error.
        let nonzero = b
            .literal
            .as_deref()
            .and_then(|l| l.parse::<f64>().ok())
            .is_some_and(|v| v != 0.0);
        if !nonzero && b.kind != Kind::Null {
            return Err(format!(
                "{e} divides by a value that may be 0: SQLite gives NULL, Postgres an error"
            ));
        }
        if *op == B::Modulo && (a.kind == Kind::Real || b.kind == Kind::Real) {
            return Err(format!(
                "{e}: % of a REAL (SQLite truncates both sides to integers first)"
            ));
        }
    }
    let kind = if a.kind == Kind::Null || b.kind == Kind::Null {
        Kind::Null
    } else if a.kind == Kind::Real || b.kind == Kind::Real {
        Kind::Real
    } else {
        Kind::Int
    };
    // SQLite computes integers in 64 bits; Postgres in the operands' width.
    let widen = |t: &T| {
        if kind == Kind::Int && !t.wide {
            format!("({})::int8", t.sql)
        } else {
            t.sql.clone()
        }
    };
    let sym = match op {
        B::Plus => "+",
        B::Minus => "-",
        B::Multiply => "*",
        B::Divide => "/",
        _ => "%",
    };
    let mut t = T::new(format!("{} {sym} {}", widen(&a), widen(&b)), kind);
    t.wide = kind == Kind::Int;
    Ok(t)
}

fn like(
    e: &Expr,
    s: &Scope,
    negated: bool,
    expr: &Expr,
    pattern: &Expr,
    escape: Option<&Expr>,
) -> Result<T, Why> {
    let (x, p) = (node(expr, s)?, node(pattern, s)?);
    for t in [&x, &p] {
        if !matches!(t.kind, Kind::Text | Kind::Null) {
            return Err(format!(
                "{e}: LIKE on {} (SQLite makes text of it first)",
                t.kind.name()
            ));
        }
    }
    // SQLite's LIKE ignores the case of ASCII letters only, and has no escape character unless
    // one is given (Postgres' default is the backslash).
    let esc = match escape {
        None => "''".to_string(),
        Some(Expr::Value(v)) => match &v.value {
            Value::SingleQuotedString(c)
                if c.chars().count() == 1 && !c.chars().all(|c| c.is_ascii_alphabetic()) =>
            {
                format!("'{}'", c.replace('\'', "''"))
            }
            _ => return Err(format!("{e}: the ESCAPE is not one non-letter character")),
        },
        Some(_) => return Err(format!("{e}: the ESCAPE is not a literal")),
    };
    let fold = Collation::Nocase;
    Ok(T::new(
        format!(
            "{} {}LIKE {} ESCAPE {esc}",
            fold.key(&x.sql),
            if negated { "NOT " } else { "" },
            fold.key(&p.sql)
        ),
        Kind::Cond,
    ))
}

/// `x GLOB 'pattern'`: a literal pattern becomes a case-sensitive LIKE.
fn glob(e: &Expr, x: T, p: T) -> Result<T, Why> {
    if x.kind != Kind::Text {
        return Err(format!("{e}: GLOB on {}", x.kind.name()));
    }
    let Some(pat) = p
        .sql
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix("'::text"))
        .filter(|_| p.kind == Kind::Text)
    else {
        return Err(format!("{e}: GLOB with a pattern that is not a literal"));
    };
    let pat = pat.replace("''", "'");
    if pat.contains('[') {
        return Err(format!(
            "{e}: GLOB character classes ([...]) are not translated"
        ));
    }
    let mut like = String::new();
    for c in pat.chars() {
        match c {
            '*' => like.push('%'),
            '?' => like.push('_'),
            '%' | '_' | '\\' => {
                like.push('\\');
                like.push(c);
            }
            '\'' => like.push_str("''"),
            c => like.push(c),
        }
    }
    Ok(T::new(
        format!("{} LIKE '{like}' ESCAPE '\\'", x.sql),
        Kind::Cond,
    ))
}

fn case(
    e: &Expr,
    s: &Scope,
    operand: Option<&Expr>,
    conditions: &[sqlparser::ast::CaseWhen],
    else_result: Option<&Expr>,
) -> Result<T, Why> {
    let subject = operand.map(|o| node(o, s)).transpose()?;
    let mut parts = Vec::new();
    let mut results = Vec::new();
    for w in conditions {
        let when = match &subject {
            Some(x) => compare(e, x.clone(), "=", node(&w.condition, s)?)?.sql,
            None => node(&w.condition, s)?.cond()?,
        };
        let r = node(&w.result, s)?;
        parts.push(when);
        results.push(r);
    }
    if let Some(x) = else_result {
        results.push(node(x, s)?);
    }
    let kind = one_kind(e, &results)?;
    let mut sql = String::from("CASE");
    for (when, r) in parts.iter().zip(&results) {
        sql.push_str(&format!(" WHEN {when} THEN {}", r.clone().number().sql));
    }
    if else_result.is_some()
        && let Some(r) = results.last()
    {
        sql.push_str(&format!(" ELSE {}", r.clone().number().sql));
    }
    sql.push_str(" END");
    Ok(T::new(sql, kind))
}

/// The one storage class of several results (NULLs aside): SQLite keeps each value's own
/// class, Postgres converts them all to one type.
fn one_kind(e: &Expr, results: &[T]) -> Result<Kind, Why> {
    let mut kind = Kind::Null;
    for r in results {
        let k = if r.kind == Kind::Cond {
            Kind::Int
        } else {
            r.kind
        };
        if k == Kind::Null {
            continue;
        }
        if kind != Kind::Null && kind != k {
            return Err(format!(
                "{e} gives {} or {}: SQLite keeps each one's class, Postgres converts both to one type",
                kind.name(),
                k.name()
            ));
        }
        kind = k;
    }
    Ok(kind)
}

fn cast(e: &Expr, x: T, to: &DataType) -> Result<T, Why> {
    let x = x.number();
    let affinity = crate::typemap::affinity(&to.to_string());
    use crate::typemap::Affinity as A;
    match (affinity, x.kind) {
        (_, Kind::Null) => Ok(x),
        (A::Integer, Kind::Int) | (A::Real, Kind::Real) | (A::Text, Kind::Text) => Ok(x),
        (A::Integer, Kind::Real) => {
            // SQLite truncates toward zero and holds out-of-range values at the ends of the
            // 64-bit range; Postgres' cast would round, and fail.
            let v = &x.sql;
            let mut t = T::new(
                format!(
                    "CASE WHEN {v} >= 9223372036854775807 THEN 9223372036854775807 WHEN {v} <= -9223372036854775808 THEN -9223372036854775808 ELSE trunc({v})::int8 END"
                ),
                Kind::Int,
            );
            t.wide = true;
            Ok(t)
        }
        (A::Real, Kind::Int) => Ok(T::new(format!("({})::float8", x.sql), Kind::Real)),
        (A::Text, Kind::Int) => Ok(T::new(format!("({})::text", x.sql), Kind::Text)),
        _ => Err(format!(
            "{e}: CAST of {} to {to}: SQLite's conversion rules differ from Postgres'",
            x.kind.name()
        )),
    }
}

fn args_of(e: &Expr, f: &Function, s: &Scope) -> Result<Vec<T>, Why> {
    match &f.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::List(list) => {
            if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
                return Err(format!("{e} is not translated"));
            }
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => node(x, s),
                    _ => Err(format!("{e}: an argument that is not a value")),
                })
                .collect()
        }
        FunctionArguments::Subquery(_) => Err(format!("{e}: a subquery")),
    }
}

fn function(e: &Expr, f: &Function, s: &Scope) -> Result<T, Why> {
    if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() {
        return Err(format!("{e} is not translated"));
    }
    let name = f.name.to_string().to_ascii_lowercase();
    if let FunctionArguments::List(l) = &f.args
        && name == "count"
        && l.duplicate_treatment.is_none()
        && matches!(
            l.args.as_slice(),
            [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]
        )
    {
        let mut t = T::new("count(*)".into(), Kind::Int);
        t.wide = true;
        return Ok(t);
    }
    let args = args_of(e, f, s)?;
    let n = args.len();
    let arity = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(format!("{e}: {name}() with {n} argument(s)"))
        }
    };
    let text_args = |args: &[T]| -> Result<(), Why> {
        for a in args {
            if !matches!(a.kind, Kind::Text | Kind::Null) {
                return Err(format!(
                    "{e}: {name}() of {} (SQLite makes text of it first)",
                    a.kind.name()
                ));
            }
        }
        Ok(())
    };
    let call = |pg: &str, args: &[T], kind: Kind| {
        let list: Vec<String> = args.iter().map(|a| a.clone().number().sql).collect();
        T::new(format!("{pg}({})", list.join(", ")), kind)
    };
    match name.as_str() {
        "coalesce" | "ifnull" => {
            arity(if name == "ifnull" { n == 2 } else { n >= 2 })?;
            let kind = one_kind(e, &args)?;
            Ok(call("COALESCE", &args, kind))
        }
        "nullif" => {
            arity(n == 2)?;
            let kind = one_kind(e, &args)?;
            if kind == Kind::Text && collation_of(&args[0], &args[1]) != Collation::Binary {
                return Err(format!("{e}: nullif() under NOCASE or RTRIM"));
            }
            Ok(call("NULLIF", &args, kind))
        }
        "iif" => {
            arity(n == 3)?;
            let mut it = args.into_iter();
            let (c, a, b) = match (it.next(), it.next(), it.next()) {
                (Some(c), Some(a), Some(b)) => (c, a, b),
                _ => return Err(format!("{e}: iif() with {n} argument(s)")),
            };
            let kind = one_kind(e, &[a.clone(), b.clone()])?;
            Ok(T::new(
                format!(
                    "CASE WHEN {} THEN {} ELSE {} END",
                    c.cond()?,
                    a.number().sql,
                    b.number().sql
                ),
                kind,
            ))
        }
        "length" => {
            arity(n == 1)?;
            let a = args[0].clone().number();
            match a.kind {
                Kind::Text | Kind::Null => Ok(call("length", &[a], Kind::Int)),
                Kind::Blob => Ok(call("octet_length", &[a], Kind::Int)),
                Kind::Int => Ok(T::new(format!("length(({})::text)", a.sql), Kind::Int)),
                other => Err(format!(
                    "{e}: length() of {} counts the characters of SQLite's text form of it",
                    other.name()
                )),
            }
        }
        "lower" | "upper" => {
            arity(n == 1)?;
            text_args(&args)?;
            // SQLite's own lower() and upper() change ASCII letters only.
            let (from, to) = ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz");
            let (from, to) = if name == "lower" {
                (from, to)
            } else {
                (to, from)
            };
            Ok(T::new(
                format!("translate({}, '{from}', '{to}')", args[0].sql),
                Kind::Text,
            ))
        }
        "trim" | "ltrim" | "rtrim" => {
            let pg = match name.as_str() {
                "trim" => "btrim",
                other => other,
            };
            trim(e, pg, args)
        }
        "substr" | "substring" => substr(e, args),
        "instr" => {
            arity(n == 2)?;
            text_args(&args)?;
            Ok(call("strpos", &args, Kind::Int))
        }
        "replace" => {
            arity(n == 3)?;
            text_args(&args)?;
            Ok(call("replace", &args, Kind::Text))
        }
        "abs" => {
            arity(n == 1)?;
            let a = args[0].clone().number();
            match a.kind {
                Kind::Int | Kind::Real | Kind::Null => {
                    let mut t = call("abs", std::slice::from_ref(&a), a.kind);
                    t.wide = a.wide;
                    Ok(t)
                }
                other => Err(format!("{e}: abs() of {}", other.name())),
            }
        }
        "typeof" => {
            arity(n == 1)?;
            let a = &args[0];
            let class = match a.kind {
                Kind::Int | Kind::Cond => "integer",
                Kind::Real => "real",
                Kind::Text => "text",
                Kind::Blob => "blob",
                Kind::Null => return Ok(text_literal("null")),
                Kind::Numeric | Kind::Opaque => {
                    return Err(format!(
                        "{e}: typeof() of {} depends on the row in SQLite",
                        a.kind.name()
                    ));
                }
            };
            Ok(T::new(
                format!("CASE WHEN {} IS NULL THEN 'null' ELSE '{class}' END", a.sql),
                Kind::Text,
            ))
        }
        "datetime" | "date" | "time" | "julianday" | "strftime" | "current_timestamp"
        | "current_date" | "current_time" => date_function(e, &name, f, s),
        "printf" | "format" => Err(format!(
            "{e}: printf()'s conversions (%d of text, %s of a REAL, %q, widths) have no exact Postgres equivalent"
        )),
        "round" => Err(format!(
            "{e}: SQLite's round() rounds halves away from zero in decimal, Postgres' round(double precision) to even"
        )),
        // Aggregates (in a view).
        "count" => {
            arity(n == 1)?;
            let mut t = call("count", &args, Kind::Int);
            t.wide = true;
            Ok(t)
        }
        "sum" | "avg" => {
            arity(n == 1)?;
            match args[0].kind {
                // SQLite sums integers in 64 bits (an error past them, as Postgres' cast) and
                // divides that sum as a double; Postgres' numeric result, cast, is the same.
                Kind::Int | Kind::Cond => {
                    let a = args[0].clone().number();
                    let (sql, kind) = if name == "sum" {
                        (format!("sum({})::int8", a.sql), Kind::Int)
                    } else {
                        (format!("avg({})::float8", a.sql), Kind::Real)
                    };
                    let mut t = T::new(sql, kind);
                    t.wide = kind == Kind::Int;
                    Ok(t)
                }
                other => Err(format!(
                    "{e}: {name}() of {}: SQLite adds doubles in its own order and with its own error correction, Postgres in another",
                    other.name()
                )),
            }
        }
        "min" | "max" if n == 1 => {
            let a = args[0].clone().number();
            match a.kind {
                Kind::Int | Kind::Real | Kind::Numeric | Kind::Blob | Kind::Null => {
                    let mut t = call(&name, std::slice::from_ref(&a), a.kind);
                    t.wide = a.wide;
                    Ok(t)
                }
                Kind::Text if collation_of(&a, &a) == Collation::Binary => Ok(T::new(
                    format!("{name}({} COLLATE \"C\")", a.sql),
                    Kind::Text,
                )),
                _ => Err(format!(
                    "{e}: {name}() of text under NOCASE or RTRIM picks one spelling of equal values in SQLite's own way"
                )),
            }
        }
        "total" | "group_concat" | "string_agg" => Err(format!(
            "{e}: {name}() (REAL sums and concatenation order follow SQLite's own rules)"
        )),
        "max" | "min" if n >= 2 => Err(format!(
            "{e}: SQLite's multi-argument {name}() is NULL when an argument is, Postgres' GREATEST/LEAST skip NULLs"
        )),
        _ => Err(format!("{e}: the function {name}() is not translated")),
    }
}

fn trim(e: &Expr, pg: &str, args: Vec<T>) -> Result<T, Why> {
    if args.is_empty() || args.len() > 2 {
        return Err(format!("{e}: {pg}() with {} argument(s)", args.len()));
    }
    for a in &args {
        if !matches!(a.kind, Kind::Text | Kind::Null) {
            return Err(format!("{e}: trimming {}", a.kind.name()));
        }
    }
    // One argument: SQLite and Postgres both remove spaces (U+0020) only.
    let list: Vec<String> = args.iter().map(|a| a.sql.clone()).collect();
    Ok(T::new(format!("{pg}({})", list.join(", ")), Kind::Text))
}

/// `substr(x, start[, length])`: SQLite counts a start of 0 or below, and a negative length,
/// in its own way; a positive literal start and a non-negative literal length mean the same.
fn substr(e: &Expr, args: Vec<T>) -> Result<T, Why> {
    if args.len() < 2 || args.len() > 3 {
        return Err(format!("{e}: substr() with {} argument(s)", args.len()));
    }
    let x = &args[0];
    if !matches!(x.kind, Kind::Text | Kind::Blob | Kind::Null) {
        return Err(format!("{e}: substr() of {}", x.kind.name()));
    }
    let lit = |t: &T| {
        t.literal
            .as_deref()
            .filter(|_| t.kind == Kind::Int)
            .and_then(|l| l.parse::<i64>().ok())
    };
    match lit(&args[1]) {
        Some(v) if v >= 1 => {}
        _ => {
            return Err(format!(
                "{e}: substr() from a start that is not a positive literal (SQLite counts 0 and negative starts from the end)"
            ));
        }
    }
    if let Some(len) = args.get(2) {
        match lit(len) {
            Some(v) if v >= 0 => {}
            _ => {
                return Err(format!(
                    "{e}: substr() of a length that is not a literal of 0 or more"
                ));
            }
        }
    }
    let list: Vec<String> = args.iter().map(|a| a.sql.clone()).collect();
    let sql = format!("substr({})", list.join(", "));
    if x.kind == Kind::Blob {
        // SQLite's substr() of an empty BLOB is NULL.
        return Ok(T::new(
            format!(
                "CASE WHEN octet_length({}) = 0 THEN NULL ELSE {sql} END",
                x.sql
            ),
            Kind::Blob,
        ));
    }
    Ok(T::new(sql, x.kind))
}

/// SQLite's 'now': the statement's time in UTC, to the millisecond.
const NOW: &str = "date_trunc('milliseconds', statement_timestamp() AT TIME ZONE 'UTC')";

/// The time a date function reads, as a Postgres timestamp in UTC to the millisecond, as
/// SQLite computes it: 'now', or a date, time or timestamp column. SQLite reads a column's text
/// into milliseconds as `(int)(seconds * 1000 + 0.5)` over a double whose fraction is the
/// digits divided by their scale and capped at 0.999; the same double arithmetic runs here on
/// the microseconds Postgres holds, so `12:00:00.9996` stays in second 0 on both sides.
fn time_value(e: &Expr, v: &Expr, s: &Scope) -> Result<String, Why> {
    if let Some(text) = string_arg(v) {
        if text.eq_ignore_ascii_case("now") {
            return Ok(NOW.to_string());
        }
        return Err(format!(
            "{e}: the time value '{text}' (only 'now' and date columns are translated: SQLite reads other time values with its own parser)"
        ));
    }
    let t = node(v, s)?;
    let c = match (&t.kind, &t.opaque) {
        (Kind::Opaque, Some(PgType::Timestamp { .. })) => t.sql.clone(),
        (Kind::Opaque, Some(PgType::Timestamptz { .. })) => {
            format!("({} AT TIME ZONE 'UTC')", t.sql)
        }
        (Kind::Opaque, Some(PgType::Date)) => return Ok(format!("({})::timestamp", t.sql)),
        // A time alone is on 2000-01-01 for SQLite's date functions.
        (Kind::Opaque, Some(PgType::Time { .. })) => format!("('2000-01-01'::date + {})", t.sql),
        _ => {
            return Err(format!(
                "{e}: the time value {v} is {}: SQLite reads text with its own date parser and numbers as Julian days; only date, time and timestamp columns are translated",
                t.kind.name()
            ));
        }
    };
    Ok(format!(
        "(date_trunc('minute', {c}) + trunc(((extract(microseconds from {c})::int8 / 1000000)::float8 + least((extract(microseconds from {c})::int8 % 1000000)::float8 / 1000000::float8, 0.999::float8)) * 1000::float8 + 0.5::float8)::int8 * interval '1 millisecond')"
    ))
}

/// `column IN ('a', 'b', ...)`: the column and the words (SQLAlchemy's and Rails' enums on
/// SQLite), for comparing with an enum type on Postgres.
pub fn in_words(e: &Expr) -> Option<(&str, Vec<&str>)> {
    let Expr::In {
        expr,
        target: sqlparser::ast::InTarget::List(list),
        negated: false,
        ..
    } = e
    else {
        return None;
    };
    let Expr::Identifier(column) = expr.as_ref() else {
        return None;
    };
    let words = list.iter().map(string_arg).collect::<Option<Vec<_>>>()?;
    Some((&column.value, words))
}

fn string_arg(x: &Expr) -> Option<&str> {
    match x {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        Expr::Identifier(id) if id.quote_style == Some('\'') => Some(&id.value),
        _ => None,
    }
}

fn date_function(e: &Expr, name: &str, f: &Function, s: &Scope) -> Result<T, Why> {
    let raw: Vec<&Expr> = match &f.args {
        FunctionArguments::None => Vec::new(),
        FunctionArguments::List(l) => l
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Ok(x),
                _ => Err(format!("{e}: an argument that is not a value")),
            })
            .collect::<Result<_, Why>>()?,
        FunctionArguments::Subquery(_) => return Err(format!("{e}: a subquery")),
    };
    let literal = |x: &Expr| -> Result<String, Why> {
        string_arg(x).map(str::to_string).ok_or_else(|| {
            format!(
                "{e}: the format and the modifiers of a date function are translated when they are literals"
            )
        })
    };
    let (format, rest): (String, &[&Expr]) = match name {
        "current_timestamp" | "datetime" => ("%Y-%m-%d %H:%M:%S".into(), &raw),
        "current_date" | "date" => ("%Y-%m-%d".into(), &raw),
        "current_time" | "time" => ("%H:%M:%S".into(), &raw),
        "julianday" => (String::new(), &raw),
        _ => match raw.split_first() {
            Some((fmt, rest)) => (literal(fmt)?, rest),
            None => return Err(format!("{e}: strftime() without a format")),
        },
    };
    let (ts, modifiers) = match rest.split_first() {
        Some((v, m)) => (time_value(e, v, s)?, m),
        None if name.starts_with("current_") => (NOW.to_string(), &[][..]),
        None => return Err(format!("{e}: {name}() without a time value")),
    };
    let modifiers: Vec<String> = modifiers
        .iter()
        .map(|m| literal(m))
        .collect::<Result<_, Why>>()?;
    let format = format.as_str();
    let mut ts = ts;
    for m in &modifiers {
        ts = modifier(e, &ts, m)?;
    }
    if name == "julianday" {
        // SQLite: milliseconds since the Julian epoch, divided as a double.
        return Ok(T::new(
            format!(
                "((extract(epoch from {ts}) * 1000)::int8 + 210866760000000)::float8 / 86400000"
            ),
            Kind::Real,
        ));
    }
    let mut t = T::new(strftime(e, format, &ts)?, Kind::Text);
    t.date_form = matches!(
        format,
        "%Y-%m-%d %H:%M:%S" | "%Y-%m-%d %H:%M:%f" | "%Y-%m-%d" | "%H:%M:%S" | "%H:%M:%f"
    );
    Ok(t)
}

/// One SQLite date modifier applied to the timestamp `ts`.
fn modifier(e: &Expr, ts: &str, m: &str) -> Result<String, Why> {
    let lower = m.trim().to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    match words.as_slice() {
        ["start", "of", unit @ ("day" | "month" | "year")] => {
            return Ok(format!("date_trunc('{unit}', {ts})"));
        }
        ["localtime"] | ["utc"] => {
            return Err(format!(
                "{e}: the modifier '{m}' depends on the time zone of the machine the app runs on; Postgres knows only its own TimeZone setting"
            ));
        }
        [n, unit] => {
            let unit = unit.trim_end_matches('s');
            let (sign, digits) = match n.as_bytes().first() {
                Some(b'-') => ("-", &n[1..]),
                Some(b'+') => ("+", &n[1..]),
                _ => ("+", *n),
            };
            let whole = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
            let decimal = digits.parse::<f64>().is_ok()
                && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            let field = match unit {
                // make_interval's own parameter names.
                "day" if whole => Some("days".to_string()),
                "hour" if whole => Some("hours".to_string()),
                "minute" if whole => Some("mins".to_string()),
                "second" if decimal => Some("secs".to_string()),
                _ => None,
            };
            if let Some(field) = field {
                return Ok(format!("({ts} {sign} make_interval({field} => {digits}))"));
            }
        }
        _ => {}
    }
    Err(format!(
        "{e}: the modifier '{m}' is not translated (months and years: SQLite moves Jan 31 + 1 month to Mar 3, Postgres to Feb 28)"
    ))
}

/// SQLite's strftime format as Postgres SQL over the timestamp `ts`.
fn strftime(e: &Expr, format: &str, ts: &str) -> Result<String, Why> {
    let mut pieces: Vec<String> = Vec::new();
    let mut pattern = String::new();
    let flush = |pattern: &mut String, pieces: &mut Vec<String>| {
        if !pattern.is_empty() {
            pieces.push(format!("to_char({ts}, '{}')", pattern.replace('\'', "''")));
            pattern.clear();
        }
    };
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            match c {
                '"' | '\\' => {
                    flush(&mut pattern, &mut pieces);
                    pieces.push(format!("'{}'", c));
                }
                // Anything else is a literal inside double quotes in to_char's template.
                c => {
                    pattern.push('"');
                    pattern.push(c);
                    pattern.push('"');
                }
            }
            continue;
        }
        match chars.next() {
            Some('Y') => pattern.push_str("YYYY"),
            Some('m') => pattern.push_str("MM"),
            Some('d') => pattern.push_str("DD"),
            Some('H') => pattern.push_str("HH24"),
            Some('M') => pattern.push_str("MI"),
            Some('S') => pattern.push_str("SS"),
            Some('f') => pattern.push_str("SS\".\"MS"),
            Some('j') => pattern.push_str("DDD"),
            Some('%') => pattern.push_str("\"%\""),
            Some('s') => {
                flush(&mut pattern, &mut pieces);
                pieces.push(format!("(extract(epoch from {ts}))::int8::text"));
            }
            Some('w') => {
                flush(&mut pattern, &mut pieces);
                pieces.push(format!("(extract(dow from {ts}))::int::text"));
            }
            other => {
                return Err(format!(
                    "{e}: the strftime format %{} is not translated",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    flush(&mut pattern, &mut pieces);
    if pieces.is_empty() {
        return Ok("''::text".into());
    }
    Ok(pieces.join(" || "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        let col = Column::new;
        Scope::table(
            "t",
            vec![
                col("qty", "INTEGER", PgType::Int8, Collation::Binary),
                col("price", "REAL", PgType::Float8, Collation::Binary),
                col("email", "TEXT", PgType::Text, Collation::Nocase),
                col("name", "TEXT", PgType::Text, Collation::Binary),
                col(
                    "amount",
                    "NUMERIC",
                    PgType::Numeric { typmod: None },
                    Collation::Binary,
                ),
                col("anything", "", PgType::Text, Collation::Binary),
                col("born", "DATE", PgType::Date, Collation::Binary),
            ],
        )
    }

    fn cond(sql: &str) -> Result<String, Why> {
        condition(&parse(sql)?, &scope())
    }

    #[test]
    fn checks_translate() {
        assert_eq!(cond("qty >= 0").unwrap(), "\"qty\" >= 0");
        assert_eq!(
            cond("Discount >= 0 AND Discount <= 1").unwrap_err(),
            "no column is named Discount"
        );
        assert_eq!(
            cond("price >= 0 AND price <= 1").unwrap(),
            "\"price\" >= 0 AND \"price\" <= 1"
        );
        assert_eq!(cond("amount >= 0.5").unwrap(), "\"amount\" >= 0.5");
        assert_eq!(cond("qty > 0.5").unwrap(), "\"qty\" > 0.5");
        assert_eq!(cond("qty").unwrap(), "(\"qty\" <> 0)");
        assert_eq!(
            cond("length(name) <= 20").unwrap(),
            "length(\"name\") <= 20"
        );
        assert!(cond("name > 'a'").unwrap().contains("COLLATE \"C\""));
        assert!(cond("email = 'A'").unwrap().starts_with("translate("));
        assert!(
            cond("email = 'A' COLLATE BINARY")
                .unwrap()
                .starts_with("\"email\"")
        );
        assert!(cond("name IN ('a', 'b')").is_ok());
        assert!(cond("qty BETWEEN 1 AND 5").is_ok());
        assert!(cond("name LIKE 'a%'").unwrap().contains("ESCAPE ''"));
        assert!(cond("name GLOB 'a*_'").unwrap().contains("LIKE 'a%\\_'"));
        assert!(cond("typeof(qty) = 'integer'").is_ok());
        assert!(cond("name IS NOT NULL").is_ok());
        assert!(cond("qty IS NOT 3").unwrap().contains("IS DISTINCT FROM"));
    }

    #[test]
    fn refuses_lookalikes() {
        for sql in [
            "'a' + 'b' = 0",
            "qty / price > 1",
            "qty = '5x'",
            "anything > 0",
            "born > '2020-01-01'",
            "amount * 2 > 1",
            "printf('%d', qty) = '1'",
            "round(price) = 1",
            "substr(name, 0, 2) = 'a'",
            "name || price = 'x'",
            "\"missing\" = 'x'",
            "max(qty, 2) = 2",
            "ifnull(qty, 0.5) > 0",
        ] {
            assert!(cond(sql).is_err(), "{sql} must be refused: {:?}", cond(sql));
        }
        assert!(cond("qty / 2 > 1").is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Token soup from SQLite's expression grammar: parsed or refused, never a panic, and
        /// what translates is never empty.
        #[test]
        fn translation_never_panics(tokens in proptest::collection::vec(proptest::sample::select(vec![
            "qty", "price", "email", "name", "born", "amount", "t.qty", "(", ")", "+", "-", "*",
            "/", "%", "||", "=", "<>", "<", ">=", "AND", "OR", "NOT", "IS", "NULL", "'a'", "'5'",
            "1", "2.5", "0", "CASE", "WHEN", "THEN", "ELSE", "END", "length(", "substr(", ",",
            "COLLATE", "NOCASE", "LIKE", "GLOB", "'x%'", "IN", "BETWEEN", "typeof(", "iif(",
            "strftime('%Y-%m-%d %H:%M:%f', 'now'", "datetime('now', '+1 day'", "CAST(", "AS",
            "INTEGER", "TEXT", "REAL", "count(*)", "sum(", "min(", "x'00'", "ESCAPE", "'!'",
        ]), 1..14)) {
            let sql = tokens.join(" ");
            if let Ok(e) = parse(&sql) {
                if let Ok(t) = translate(&e, &scope()) {
                    proptest::prop_assert!(!t.sql.is_empty());
                }
                let _ = condition(&e, &scope());
                let _ = value_for(&e, &Scope::default(), &PgType::Text);
            }
        }
    }

    #[test]
    fn translates_date_defaults() {
        let v = |sql: &str, ty: PgType| value_for(&parse(sql).unwrap(), &Scope::default(), &ty);
        let ms = v("strftime('%Y-%m-%d %H:%M:%f', 'now')", PgType::Text).unwrap();
        assert!(ms.contains("to_char("), "{ms}");
        assert!(ms.contains("\"-\"MM"), "{ms}");
        assert!(v("datetime('now', 'localtime')", PgType::Text).is_err());
        assert!(v("date('now', '+1 month')", PgType::Text).is_err());
        assert!(v("date('now', '+1 day', 'start of month')", PgType::Text).is_ok());
        assert!(v("datetime('now')", PgType::Timestamp { precision: None }).is_ok());
        assert!(v("strftime('%s', 'now')", PgType::Int8).is_err());
        assert!(v("CAST(strftime('%s', 'now') AS INTEGER)", PgType::Int8).is_err());
        assert!(v("julianday('now')", PgType::Float8).is_ok());
        assert!(v("(1 + 2)", PgType::Int8).is_ok());
        assert!(v("'x' || 1", PgType::Text).is_ok());
    }
}
