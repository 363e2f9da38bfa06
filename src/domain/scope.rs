//! Scopes, roles and environments. A scope set is a bit set: checking a scope on the hot path is
//! one AND.
use super::Invalid;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    ProductsRead,
    ProductsWrite,
    ProductsDelete,
    CategoriesRead,
    SuppliersRead,
    ImportsRead,
    ImportsWrite,
    ExportsRead,
    ExportsWrite,
    ExtProductsRead,
    ExtProductsWrite,
    WindevRead,
    WindevWrite,
    WindevSync,
}

impl Scope {
    pub const ALL: [Scope; 14] = [
        Scope::ProductsRead,
        Scope::ProductsWrite,
        Scope::ProductsDelete,
        Scope::CategoriesRead,
        Scope::SuppliersRead,
        Scope::ImportsRead,
        Scope::ImportsWrite,
        Scope::ExportsRead,
        Scope::ExportsWrite,
        Scope::ExtProductsRead,
        Scope::ExtProductsWrite,
        Scope::WindevRead,
        Scope::WindevWrite,
        Scope::WindevSync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ProductsRead => "products:read",
            Scope::ProductsWrite => "products:write",
            Scope::ProductsDelete => "products:delete",
            Scope::CategoriesRead => "categories:read",
            Scope::SuppliersRead => "suppliers:read",
            Scope::ImportsRead => "imports:read",
            Scope::ImportsWrite => "imports:write",
            Scope::ExportsRead => "exports:read",
            Scope::ExportsWrite => "exports:write",
            Scope::ExtProductsRead => "ext:products:read",
            Scope::ExtProductsWrite => "ext:products:write",
            Scope::WindevRead => "windev:read",
            Scope::WindevWrite => "windev:write",
            Scope::WindevSync => "windev:sync",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    fn is_read(self) -> bool {
        self.as_str().ends_with(":read")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScopeSet(u16);

impl ScopeSet {
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }

    /// Parses a list of scope names: unknown names and an empty list are refused.
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Self, Invalid> {
        let mut set = ScopeSet::default();
        for name in names {
            let name = name.as_ref();
            let scope = Scope::parse(name)
                .ok_or_else(|| Invalid::new("scopes", format!("unknown scope {name:?}")))?;
            set.0 |= scope.bit();
        }
        if set.is_empty() {
            return Err(Invalid::new("scopes", "at least one scope is required"));
        }
        Ok(set)
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, Invalid> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            _ => Err(Invalid::new("role", "must be one of admin, editor, viewer")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    pub fn scopes(self) -> ScopeSet {
        match self {
            Role::Viewer => Scope::ALL.into_iter().filter(|s| s.is_read()).collect(),
            Role::Editor | Role::Admin => ScopeSet::all(),
        }
    }
}

/// Every tenant's data is split in two: `live` and `test`. A key's prefix names its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn tag(self) -> u8 {
        match self {
            Environment::Live => b'L',
            Environment::Test => b'T',
        }
    }

    pub fn from_tag(tag: u8) -> Option<Environment> {
        match tag {
            b'L' => Some(Environment::Live),
            b'T' => Some(Environment::Test),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_round_trips_through_its_name() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
    }

    #[test]
    fn unknown_and_empty_scope_lists_are_refused() {
        assert!(ScopeSet::parse_list(&["products:read", "products:admin"]).is_err());
        assert!(ScopeSet::parse_list::<&str>(&[]).is_err());
        assert!(ScopeSet::parse_list(&["PRODUCTS:READ"]).is_err());
    }

    #[test]
    fn viewers_get_only_read_scopes_and_editors_get_all() {
        let viewer = Role::Viewer.scopes();
        assert!(viewer.contains(Scope::ProductsRead));
        assert!(viewer.contains(Scope::WindevRead));
        assert!(!viewer.contains(Scope::ProductsWrite));
        assert!(!viewer.contains(Scope::WindevSync));
        assert_eq!(Role::Editor.scopes(), ScopeSet::all());
    }
}
