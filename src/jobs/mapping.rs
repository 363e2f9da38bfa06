//! Columns to product fields: the synonyms analysis recognises (French and English, accents
//! and case ignored), the check of a mapping a client sends, and a row's cells turned into a
//! product patch (decimal commas, `oui`/`non`, EANs that a spreadsheet stored as numbers).
use crate::catalog::ProductPatch;
use crate::catalog::field::Field;
use crate::domain::Invalid;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The product fields a column can fill, besides `attributes.<name>`.
pub const FIELDS: &[&str] = &[
    "ean",
    "name",
    "sku",
    "reference",
    "description",
    "brand",
    "price",
    "cost_price",
    "currency",
    "weight",
    "stock",
    "is_active",
    "supplier_code",
    "supplier_id",
    "category_ids",
];

/// A mapping that leaves a column out.
pub const IGNORE: &str = "ignore";

/// Normalised header → field. Headers are compared lower-cased, without accents, spaces or
/// punctuation: `Code-barres`, `code barres` and `CODE_BARRES` are one header.
const SYNONYMS: &[(&str, &[&str])] = &[
    (
        "ean",
        &[
            "ean",
            "ean13",
            "ean8",
            "gtin",
            "gtin13",
            "codebarres",
            "codebarre",
            "barcode",
            "codeean",
            "upc",
        ],
    ),
    (
        "name",
        &[
            "name",
            "nom",
            "designation",
            "libelle",
            "productname",
            "nomproduit",
            "nomduproduit",
            "title",
            "titre",
            "intitule",
        ],
    ),
    ("sku", &["sku", "codeinterne", "codearticle", "articlecode"]),
    (
        "reference",
        &[
            "reference",
            "ref",
            "referencewindev",
            "refarticle",
            "itemreference",
        ],
    ),
    (
        "description",
        &[
            "description",
            "descriptif",
            "longdescription",
            "descriptionlongue",
        ],
    ),
    ("brand", &["brand", "marque", "fabricant", "manufacturer"]),
    (
        "price",
        &[
            "price",
            "prix",
            "prixvente",
            "prixdevente",
            "saleprice",
            "prixttc",
            "pvttc",
            "unitprice",
            "prixunitaire",
        ],
    ),
    (
        "cost_price",
        &[
            "costprice",
            "cost",
            "prixachat",
            "prixdachat",
            "cout",
            "coutachat",
            "purchaseprice",
        ],
    ),
    ("currency", &["currency", "devise", "monnaie"]),
    (
        "weight",
        &["weight", "poids", "poidskg", "weightkg", "masse"],
    ),
    (
        "stock",
        &[
            "stock",
            "quantity",
            "quantite",
            "qty",
            "qte",
            "inventory",
            "stockdisponible",
        ],
    ),
    (
        "is_active",
        &[
            "isactive", "active", "actif", "enabled", "statut", "status", "enligne",
        ],
    ),
    (
        "supplier_code",
        &[
            "suppliercode",
            "supplier",
            "fournisseur",
            "codefournisseur",
            "vendor",
            "vendorcode",
        ],
    ),
    ("supplier_id", &["supplierid", "idfournisseur"]),
    (
        "category_ids",
        &["categoryids", "categories", "categorieids", "idcategories"],
    ),
];

/// A header as analysis compares it.
pub fn normalise(header: &str) -> String {
    let mut out = String::with_capacity(header.len());
    for c in header.chars().flat_map(char::to_lowercase) {
        let folded = match c {
            'à' | 'â' | 'ä' | 'á' | 'ã' | 'å' => "a",
            'é' | 'è' | 'ê' | 'ë' => "e",
            'î' | 'ï' | 'í' | 'ì' => "i",
            'ô' | 'ö' | 'ó' | 'ò' | 'õ' => "o",
            'ù' | 'û' | 'ü' | 'ú' => "u",
            'ç' => "c",
            'ñ' => "n",
            'ÿ' => "y",
            'œ' => "oe",
            'æ' => "ae",
            c if c.is_alphanumeric() => {
                out.push(c);
                continue;
            }
            _ => continue,
        };
        out.push_str(folded);
    }
    out
}

/// The field a header names, if analysis recognises it.
pub fn guess(header: &str) -> Option<&'static str> {
    let n = normalise(header);
    SYNONYMS
        .iter()
        .find(|(_, names)| names.contains(&n.as_str()))
        .map(|(field, _)| *field)
}

/// The mapping analysis proposes: each recognised header to its field, the first header
/// winning when two name the same field.
pub fn propose(headers: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut taken = Vec::new();
    for h in headers {
        if let Some(field) = guess(h)
            && !taken.contains(&field)
        {
            taken.push(field);
            out.insert(h.clone(), field.to_owned());
        }
    }
    out
}

/// Whether a mapping lets rows become products: `ean` and `name` are both mapped.
pub fn is_complete(mapping: &BTreeMap<String, String>) -> bool {
    let has = |f: &str| mapping.values().any(|v| v == f);
    has("ean") && has("name")
}

fn is_field(target: &str) -> bool {
    FIELDS.contains(&target)
        || target
            .strip_prefix("attributes.")
            .is_some_and(|k| !k.trim().is_empty() && k.chars().count() <= 100)
}

/// Checks a client's mapping against the file's headers: each target is a field (or
/// `ignore`). Ignored columns, and columns the file does not have (a template made for a
/// wider layout), are left out; the job's answer shows the mapping kept. Several columns may fill one field
/// (`EAN` and `GTIN`, say): a row's first non-empty one, in file order, wins.
pub fn check(
    mapping: &BTreeMap<String, String>,
    headers: &[String],
) -> Result<BTreeMap<String, String>, Vec<Invalid>> {
    let mut errors = Vec::new();
    let mut out = BTreeMap::new();
    for (header, target) in mapping {
        let target = target.trim();
        if target.is_empty() || target == IGNORE {
            continue;
        }
        if !is_field(target) {
            errors.push(Invalid::new(
                format!("mapping.{header}"),
                format!(
                    "'{target}' is not a product field (one of {}, attributes.<name> or ignore)",
                    FIELDS.join(", ")
                ),
            ));
            continue;
        }
        if headers.iter().any(|h| h == header) {
            out.insert(header.clone(), target.to_owned());
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Per-import values applied to every row that does not carry its own.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub supplier_id: Option<Uuid>,
    pub supplier_code: Option<String>,
}

/// A mapping resolved to column positions.
#[derive(Debug, Clone)]
pub struct Plan {
    columns: Vec<(usize, String)>,
    defaults: Defaults,
}

impl Plan {
    pub fn new(headers: &[String], mapping: &BTreeMap<String, String>, defaults: Defaults) -> Plan {
        let columns = headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| mapping.get(h).map(|f| (i, f.clone())))
            .collect();
        Plan { columns, defaults }
    }

    /// The EAN a row names, normalised as the catalog stores it (for duplicate detection).
    pub fn ean_of(&self, cells: &[String]) -> Option<u64> {
        let (i, _) = self.columns.iter().find(|(_, f)| f == "ean")?;
        let ean = ean_text(cells.get(*i)?);
        crate::domain::Ean::parse(&ean)
            .ok()
            .and_then(|e| e.as_str().parse().ok())
    }

    /// A row's cells as a patch; an empty cell leaves its field as it is.
    pub fn patch(&self, cells: &[String]) -> Result<ProductPatch, Vec<Invalid>> {
        let mut p = ProductPatch::default();
        let mut errors = Vec::new();
        let mut attributes = BTreeMap::new();
        let mut filled = std::collections::HashSet::new();
        for (i, field) in &self.columns {
            let Some(raw) = cells.get(*i).map(|c| c.trim()) else {
                continue;
            };
            if raw.is_empty() || !filled.insert(field.as_str()) {
                continue;
            }
            let value = || Field::Value(raw.to_owned());
            let mut bad = |message: &str| errors.push(Invalid::new(field.as_str(), message));
            match field.as_str() {
                "ean" => p.ean = Field::Value(ean_text(raw)),
                "name" => p.name = value(),
                "sku" => p.sku = value(),
                "reference" => p.reference = value(),
                "description" => p.description = value(),
                "brand" => p.brand = value(),
                "currency" => p.currency = Field::Value(raw.to_uppercase()),
                "supplier_code" => p.supplier_code = value(),
                "price" | "cost_price" | "weight" => match decimal(raw) {
                    Some(n) => {
                        let slot = match field.as_str() {
                            "price" => &mut p.price,
                            "cost_price" => &mut p.cost_price,
                            _ => &mut p.weight,
                        };
                        *slot = Field::Value(n);
                    }
                    None => bad("must be a number (12.50 or 12,50)"),
                },
                "stock" => match decimal(raw) {
                    Some(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
                        p.stock = Field::Value(n as i64)
                    }
                    _ => bad("must be a whole number"),
                },
                "is_active" => match boolean(raw) {
                    Some(b) => p.is_active = Field::Value(b),
                    None => bad("must be true/false, 1/0, yes/no or oui/non"),
                },
                "supplier_id" => match Uuid::try_parse(raw) {
                    Ok(id) => p.supplier_id = Field::Value(id),
                    Err(_) => bad("must be a supplier id (a UUID)"),
                },
                "category_ids" => {
                    let ids: Result<Vec<Uuid>, _> = raw
                        .split(['|', ',', ';', ' '])
                        .filter(|s| !s.is_empty())
                        .map(Uuid::try_parse)
                        .collect();
                    match ids {
                        Ok(ids) => p.category_ids = Field::Value(ids),
                        Err(_) => bad("must be category ids (UUIDs) separated by |"),
                    }
                }
                other => {
                    if let Some(key) = other.strip_prefix("attributes.") {
                        attributes.insert(key.to_owned(), raw.to_owned());
                    }
                }
            }
        }
        if !attributes.is_empty() {
            p.attributes = Field::Value(attributes);
        }
        if p.supplier_id.is_absent() && p.supplier_code.is_absent() {
            if let Some(id) = self.defaults.supplier_id {
                p.supplier_id = Field::Value(id);
            } else if let Some(code) = &self.defaults.supplier_code {
                p.supplier_code = Field::Value(code.clone());
            }
        }
        if errors.is_empty() {
            Ok(p)
        } else {
            Err(errors)
        }
    }
}

/// An EAN cell: spaces dropped, and the leading zero a spreadsheet drops from a number put
/// back (a 12-digit UPC or a 7-digit EAN-8 read as a number).
fn ean_text(raw: &str) -> String {
    let digits: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.bytes().all(|b| b.is_ascii_digit()) && matches!(digits.len(), 7 | 12) {
        format!("0{digits}")
    } else {
        digits
    }
}

/// A number as spreadsheets write it: `12.50`, `12,50`, `1 234,50`, `1.234,50`, `1,234.50`,
/// with or without a currency sign. A lone comma is the decimal separator (French files).
pub fn decimal(raw: &str) -> Option<f64> {
    let s: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '\u{a0}' | '\u{202f}' | '€' | '$' | '£'))
        .collect();
    let normalised = match (s.rfind(','), s.rfind('.')) {
        (Some(c), Some(d)) if c > d => s.replace('.', "").replace(',', "."),
        (Some(_), Some(_)) => s.replace(',', ""),
        (Some(_), None) if s.matches(',').count() == 1 => s.replace(',', "."),
        (Some(_), None) => s.replace(',', ""),
        _ => s,
    };
    normalised.parse::<f64>().ok().filter(|n| n.is_finite())
}

fn boolean(raw: &str) -> Option<bool> {
    match normalise(raw).as_str() {
        "true" | "1" | "yes" | "y" | "oui" | "o" | "vrai" | "actif" | "active" | "x" => Some(true),
        "false" | "0" | "no" | "n" | "non" | "faux" | "inactif" | "inactive" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn french_and_english_headers_map_whatever_their_accents_and_case() {
        let h = headers(&[
            "Code-barres",
            "DÉSIGNATION",
            "Prix d'achat",
            "Qté",
            "Marque",
            "x",
        ]);
        let m = propose(&h);
        assert_eq!(m.get("Code-barres").map(String::as_str), Some("ean"));
        assert_eq!(m.get("DÉSIGNATION").map(String::as_str), Some("name"));
        assert_eq!(
            m.get("Prix d'achat").map(String::as_str),
            Some("cost_price")
        );
        assert_eq!(m.get("Qté").map(String::as_str), Some("stock"));
        assert_eq!(m.get("Marque").map(String::as_str), Some("brand"));
        assert!(!m.contains_key("x"));
        assert!(is_complete(&m));
        assert!(!is_complete(&propose(&headers(&["gtin", "prix"]))));
    }

    #[test]
    fn decimals_are_read_as_spreadsheets_write_them() {
        assert_eq!(decimal("12,50"), Some(12.5));
        assert_eq!(decimal("1 234,50 €"), Some(1234.5));
        assert_eq!(decimal("1.234,50"), Some(1234.5));
        assert_eq!(decimal("1,234.50"), Some(1234.5));
        assert_eq!(decimal("12.5"), Some(12.5));
        assert_eq!(decimal("douze"), None);
        assert_eq!(decimal("NaN"), None);
    }

    #[test]
    fn a_client_mapping_names_real_columns_and_fields() {
        let h = headers(&["a", "b", "c"]);
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), "ean".to_string());
        m.insert("c".to_string(), "colour".to_string());
        m.insert("z".to_string(), "name".to_string());
        let errors = check(&m, &h).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        m.remove("c");
        let kept = check(&m, &h).unwrap();
        assert_eq!(kept.len(), 1, "a column the file lacks is left out");
        let mut ok = BTreeMap::new();
        ok.insert("a".to_string(), "ean".to_string());
        ok.insert("b".to_string(), "attributes.colour".to_string());
        ok.insert("c".to_string(), "ignore".to_string());
        let checked = check(&ok, &h).unwrap();
        assert_eq!(checked.len(), 2);
    }

    #[test]
    fn two_columns_for_one_field_take_the_first_non_empty_cell() {
        let h = headers(&["EAN", "GTIN", "nom"]);
        let m = BTreeMap::from([
            ("EAN".to_string(), "ean".to_string()),
            ("GTIN".to_string(), "ean".to_string()),
            ("nom".to_string(), "name".to_string()),
        ]);
        let plan = Plan::new(&h, &check(&m, &h).unwrap(), Defaults::default());
        let p = plan.patch(&headers(&["", "4006381333931", "x"])).unwrap();
        assert_eq!(p.ean, Field::Value("4006381333931".into()));
        let p = plan
            .patch(&headers(&["96385074", "4006381333931", "x"]))
            .unwrap();
        assert_eq!(p.ean, Field::Value("96385074".into()));
    }

    #[test]
    fn rows_become_patches_and_bad_cells_name_their_field() {
        let h = headers(&["ean", "nom", "prix", "actif", "couleur", "stock"]);
        let mut m = propose(&h);
        m.insert("couleur".into(), "attributes.colour".into());
        let plan = Plan::new(&h, &m, Defaults::default());
        let cells = headers(&["400638133393", "Thé", "3,20", "oui", "vert", "12"]);
        let p = plan.patch(&cells).unwrap();
        assert_eq!(p.ean, Field::Value("0400638133393".into()));
        assert_eq!(p.price, Field::Value(3.2));
        assert_eq!(p.is_active, Field::Value(true));
        assert_eq!(p.stock, Field::Value(12));
        assert_eq!(
            p.attributes,
            Field::Value(BTreeMap::from([("colour".into(), "vert".into())]))
        );
        let bad = headers(&["1", "x", "cher", "peut-être", "", "1,5"]);
        let errors = plan.patch(&bad).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["price", "is_active", "stock"]);
    }
}
