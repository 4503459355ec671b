//! Whose rows of a target table a migration writes and reads. A single file, or a fleet's
//! tenant with a schema of its own, owns every row; in a fleet's shared-tables layout a tenant
//! owns the rows whose tenant column holds its name, and every statement sqlite2pg sends
//! names that column: inserts write it, keys lead with it, reads and deletes filter on it.

use tokio_postgres::types::{ToSql, Type};

use super::quote_ident;

/// The rows of a target table that are this migration's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rows {
    /// Every row: the schema is this migration's alone.
    All,
    /// The rows whose `column` holds `tenant`.
    Tenant {
        /// The tenant column.
        column: String,
        /// The tenant's name, as the column holds it.
        tenant: String,
    },
}

impl Rows {
    /// A migration's rows: those of `tenant` when the target's tables have a tenant `column`
    /// (a fleet's shared-tables layout), else all.
    pub fn of(column: Option<&str>, tenant: &str) -> Rows {
        match column {
            Some(column) => Rows::Tenant {
                column: column.to_string(),
                tenant: tenant.to_string(),
            },
            None => Rows::All,
        }
    }

    /// The tenant column, when rows name their tenant.
    pub fn column(&self) -> Option<&str> {
        match self {
            Rows::All => None,
            Rows::Tenant { column, .. } => Some(column),
        }
    }

    /// `alias.column = $n` (the tenant bound as parameter `n`), or `None` for every row.
    pub fn condition(&self, alias: Option<&str>, n: usize) -> Option<String> {
        let column = quote_ident(self.column()?);
        Some(match alias {
            Some(a) => format!("{a}.{column} = ${n}"),
            None => format!("{column} = ${n}"),
        })
    }

    /// ` AND alias.column = $n`, or nothing.
    pub fn and(&self, alias: &str, n: usize) -> String {
        self.condition(Some(alias), n)
            .map(|c| format!(" AND {c}"))
            .unwrap_or_default()
    }

    /// ` WHERE column = $n`, or nothing.
    pub fn filter(&self, n: usize) -> String {
        self.condition(None, n)
            .map(|c| format!(" WHERE {c}"))
            .unwrap_or_default()
    }

    /// The quoted tenant column and a comma, to lead a column list; nothing for every row.
    pub fn lead_column(&self) -> String {
        self.column()
            .map(|c| format!("{}, ", quote_ident(c)))
            .unwrap_or_default()
    }

    /// `$n::text, ` to lead a select list's values; nothing for every row.
    pub fn lead_value(&self, n: usize) -> String {
        match self {
            Rows::All => String::new(),
            Rows::Tenant { .. } => format!("${n}::text, "),
        }
    }

    /// The parameters a statement built with `n = 1` binds: the tenant, or none.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Rows::All => Vec::new(),
            Rows::Tenant { tenant, .. } => vec![tenant],
        }
    }

    /// [`Rows::params`] with their types, for a statement sent in one round trip
    /// (`execute_typed`: no prepare first).
    pub fn typed_params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        match self {
            Rows::All => Vec::new(),
            Rows::Tenant { tenant, .. } => vec![(tenant, Type::TEXT)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_adds_nothing_and_a_tenant_names_its_quoted_column() {
        let all = Rows::All;
        assert_eq!(
            (
                all.and("t", 1),
                all.filter(1),
                all.lead_column(),
                all.lead_value(1)
            ),
            (String::new(), String::new(), String::new(), String::new())
        );
        assert!(all.params().is_empty());
        let tenant = Rows::Tenant {
            column: "Tenant \"Id\"".into(),
            tenant: "bot-a".into(),
        };
        assert_eq!(tenant.and("t", 2), " AND t.\"Tenant \"\"Id\"\"\" = $2");
        assert_eq!(tenant.filter(1), " WHERE \"Tenant \"\"Id\"\"\" = $1");
        assert_eq!(tenant.lead_column(), "\"Tenant \"\"Id\"\"\", ");
        assert_eq!(tenant.lead_value(1), "$1::text, ");
        assert_eq!(tenant.params().len(), 1);
    }
}
