//! Writing an export file, one product at a time: CSV (RFC 4180 through the csv crate, with
//! an optional UTF-8 BOM and spreadsheet formulas neutralised), JSON (an array, pretty or not)
//! or JSON lines, and XLSX (rust_xlsxwriter's constant-memory sheets: products, suppliers).
use crate::store::{ProductRecord, SupplierRecord};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Every column an export can carry, in their default order.
pub const COLUMNS: &[&str] = &[
    "id",
    "ean",
    "barcode",
    "sku",
    "reference",
    "name",
    "description",
    "brand",
    "price",
    "cost_price",
    "currency",
    "weight",
    "stock",
    "is_active",
    "supplier_id",
    "supplier_code",
    "category_ids",
    "attributes",
    "created_at",
    "updated_at",
];

/// Rows one XLSX sheet holds, its header included (Excel's limit); more go on a next sheet.
const SHEET_ROWS: u32 = 1_048_576;

/// One cell of an export.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Number(f64),
    Int(i64),
    Bool(bool),
    Empty,
}

/// A product's value for `column`.
pub fn cell(p: &ProductRecord, column: &str) -> Cell {
    let text = |s: &Option<String>| s.clone().map_or(Cell::Empty, Cell::Text);
    let number = |n: Option<f64>| n.map_or(Cell::Empty, Cell::Number);
    match column {
        "id" => Cell::Text(p.id.to_string()),
        "ean" | "barcode" => Cell::Text(p.ean.clone()),
        "sku" => text(&p.sku),
        "reference" => text(&p.reference),
        "name" => Cell::Text(p.name.clone()),
        "description" => text(&p.description),
        "brand" => text(&p.brand),
        "price" => number(p.price),
        "cost_price" => number(p.cost_price),
        "currency" => Cell::Text(p.currency.clone()),
        "weight" => number(p.weight),
        "stock" => Cell::Int(p.stock),
        "is_active" => Cell::Bool(p.is_active),
        "supplier_id" => p
            .supplier_id
            .map_or(Cell::Empty, |s| Cell::Text(s.to_string())),
        "supplier_code" => text(&p.supplier_code),
        "category_ids" => Cell::Text(
            p.category_ids
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("|"),
        ),
        "attributes" if p.attributes.is_empty() => Cell::Empty,
        "attributes" => Cell::Text(serde_json::to_string(&p.attributes).unwrap_or_default()),
        "created_at" => Cell::Text(crate::web::rfc3339(p.created_at)),
        "updated_at" => Cell::Text(crate::web::rfc3339(p.updated_at)),
        _ => Cell::Empty,
    }
}

/// A text cell a spreadsheet could take for a formula (`=`, `+`, `-`, `@`, or a tab or
/// carriage return before one) gets a leading `'`, so it is shown, never run.
pub fn neutralised(text: &str) -> std::borrow::Cow<'_, str> {
    match text.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{text}").into(),
        _ => text.into(),
    }
}

fn json_value(p: &ProductRecord, columns: &[String]) -> serde_json::Value {
    let mut map = serde_json::Map::with_capacity(columns.len());
    for c in columns {
        let v = match c.as_str() {
            "category_ids" => serde_json::json!(p.category_ids),
            "attributes" => serde_json::json!(p.attributes),
            _ => match cell(p, c) {
                Cell::Text(s) => serde_json::Value::String(s),
                Cell::Number(n) => serde_json::json!(n),
                Cell::Int(i) => serde_json::json!(i),
                Cell::Bool(b) => serde_json::Value::Bool(b),
                Cell::Empty => serde_json::Value::Null,
            },
        };
        map.insert(c.clone(), v);
    }
    serde_json::Value::Object(map)
}

fn io(e: impl std::fmt::Display) -> String {
    format!("the export file could not be written: {e}")
}

/// What writes an export, product by product.
pub trait Sink {
    fn product(&mut self, p: &ProductRecord) -> Result<(), String>;
    /// Completes the file and makes it durable.
    fn finish(self: Box<Self>, suppliers: &[SupplierRecord]) -> Result<(), String>;
}

pub struct CsvSink {
    out: csv::Writer<BufWriter<File>>,
    columns: Vec<String>,
    row: Vec<String>,
}

impl CsvSink {
    pub fn create(path: &Path, columns: Vec<String>, bom: bool) -> Result<CsvSink, String> {
        let mut file = BufWriter::with_capacity(1 << 16, File::create(path).map_err(io)?);
        if bom {
            file.write_all("\u{feff}".as_bytes()).map_err(io)?;
        }
        let mut out = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(file);
        out.write_record(&columns).map_err(io)?;
        Ok(CsvSink {
            out,
            row: Vec::with_capacity(columns.len()),
            columns,
        })
    }
}

impl Sink for CsvSink {
    fn product(&mut self, p: &ProductRecord) -> Result<(), String> {
        self.row.clear();
        for c in &self.columns {
            self.row.push(match cell(p, c) {
                Cell::Text(s) => neutralised(&s).into_owned(),
                Cell::Number(n) => n.to_string(),
                Cell::Int(i) => i.to_string(),
                Cell::Bool(b) => b.to_string(),
                Cell::Empty => String::new(),
            });
        }
        self.out.write_record(&self.row).map_err(io)
    }

    fn finish(self: Box<Self>, _: &[SupplierRecord]) -> Result<(), String> {
        let file = self.out.into_inner().map_err(io)?;
        durable(file)
    }
}

fn durable(file: BufWriter<File>) -> Result<(), String> {
    let file = file.into_inner().map_err(io)?;
    file.sync_all().map_err(io)
}

pub struct JsonSink {
    out: BufWriter<File>,
    columns: Vec<String>,
    pretty: bool,
    lines: bool,
    first: bool,
}

impl JsonSink {
    pub fn create(
        path: &Path,
        columns: Vec<String>,
        pretty: bool,
        lines: bool,
    ) -> Result<JsonSink, String> {
        let mut out = BufWriter::with_capacity(1 << 16, File::create(path).map_err(io)?);
        if !lines {
            out.write_all(b"[").map_err(io)?;
        }
        Ok(JsonSink {
            out,
            columns,
            pretty,
            lines,
            first: true,
        })
    }
}

impl Sink for JsonSink {
    fn product(&mut self, p: &ProductRecord) -> Result<(), String> {
        let value = json_value(p, &self.columns);
        if self.lines {
            serde_json::to_writer(&mut self.out, &value).map_err(io)?;
            self.out.write_all(b"\n").map_err(io)?;
        } else {
            let sep: &[u8] = match (self.first, self.pretty) {
                (true, true) => b"\n",
                (true, false) => b"",
                (false, true) => b",\n",
                (false, false) => b",",
            };
            self.out.write_all(sep).map_err(io)?;
            if self.pretty {
                serde_json::to_writer_pretty(&mut self.out, &value).map_err(io)?;
            } else {
                serde_json::to_writer(&mut self.out, &value).map_err(io)?;
            }
        }
        self.first = false;
        Ok(())
    }

    fn finish(mut self: Box<Self>, _: &[SupplierRecord]) -> Result<(), String> {
        if !self.lines {
            let end: &[u8] = if self.pretty && !self.first {
                b"\n]\n"
            } else {
                b"]\n"
            };
            self.out.write_all(end).map_err(io)?;
        }
        durable(self.out)
    }
}

pub struct XlsxSink {
    book: rust_xlsxwriter::Workbook,
    path: std::path::PathBuf,
    columns: Vec<String>,
    with_products: bool,
    with_suppliers: bool,
    /// The products sheet being written and its next row.
    sheet: usize,
    row: u32,
    bold: rust_xlsxwriter::Format,
}

fn xl(e: rust_xlsxwriter::XlsxError) -> String {
    io(e)
}

impl XlsxSink {
    pub fn create(
        path: &Path,
        temp: &Path,
        columns: Vec<String>,
        sheets: &[String],
    ) -> Result<XlsxSink, String> {
        let mut book = rust_xlsxwriter::Workbook::new();
        book.set_tempdir(temp).map_err(xl)?;
        let mut sink = XlsxSink {
            book,
            path: path.to_path_buf(),
            columns,
            with_products: sheets.iter().any(|s| s == "products"),
            with_suppliers: sheets.iter().any(|s| s == "suppliers"),
            sheet: 0,
            row: 0,
            bold: rust_xlsxwriter::Format::new().set_bold(),
        };
        if sink.with_products {
            sink.new_products_sheet()?;
        }
        Ok(sink)
    }

    fn new_products_sheet(&mut self) -> Result<(), String> {
        let name = match self.sheet {
            0 => "products".to_owned(),
            n => format!("products ({})", n + 1),
        };
        let sheet = self.book.add_worksheet_with_constant_memory().map_err(xl)?;
        sheet.set_name(&name).map_err(xl)?;
        for (col, c) in self.columns.iter().enumerate() {
            sheet
                .write_string_with_format(0, col as u16, c, &self.bold)
                .map_err(xl)?;
        }
        self.row = 1;
        Ok(())
    }
}

impl Sink for XlsxSink {
    fn product(&mut self, p: &ProductRecord) -> Result<(), String> {
        if !self.with_products {
            return Ok(());
        }
        if self.row >= SHEET_ROWS {
            self.sheet += 1;
            self.new_products_sheet()?;
        }
        let index = self.book.worksheets().len() - 1;
        let sheet = self.book.worksheet_from_index(index).map_err(xl)?;
        for (col, c) in self.columns.iter().enumerate() {
            let col = col as u16;
            match cell(p, c) {
                Cell::Text(s) => sheet.write_string(self.row, col, s).map(|_| ()),
                Cell::Number(n) => sheet.write_number(self.row, col, n).map(|_| ()),
                Cell::Int(i) => sheet.write_number(self.row, col, i as f64).map(|_| ()),
                Cell::Bool(b) => sheet.write_boolean(self.row, col, b).map(|_| ()),
                Cell::Empty => Ok(()),
            }
            .map_err(xl)?;
        }
        self.row += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>, suppliers: &[SupplierRecord]) -> Result<(), String> {
        if self.with_suppliers {
            let sheet = self.book.add_worksheet_with_constant_memory().map_err(xl)?;
            sheet.set_name("suppliers").map_err(xl)?;
            let header = [
                "id",
                "code",
                "name",
                "email",
                "phone",
                "country",
                "currency",
                "lead_time_days",
                "is_active",
            ];
            for (col, h) in header.iter().enumerate() {
                sheet
                    .write_string_with_format(0, col as u16, *h, &self.bold)
                    .map_err(xl)?;
            }
            for (i, s) in suppliers.iter().enumerate() {
                let row = i as u32 + 1;
                let text = |v: &Option<String>| v.clone().unwrap_or_default();
                let cells = [
                    s.id.to_string(),
                    s.code.clone(),
                    s.name.clone(),
                    text(&s.email),
                    text(&s.phone),
                    text(&s.country),
                    text(&s.currency),
                ];
                for (col, v) in cells.iter().enumerate() {
                    if !v.is_empty() {
                        sheet.write_string(row, col as u16, v).map_err(xl)?;
                    }
                }
                if let Some(d) = s.lead_time_days {
                    sheet.write_number(row, 7, f64::from(d)).map_err(xl)?;
                }
                sheet.write_boolean(row, 8, s.is_active).map_err(xl)?;
            }
        }
        if self.book.worksheets().is_empty() {
            self.book.add_worksheet();
        }
        let file = BufWriter::new(File::create(&self.path).map_err(io)?);
        self.book.save_to_writer(file).map_err(xl)?;
        File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_shown_never_run() {
        assert_eq!(neutralised("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(neutralised("+33 1"), "'+33 1");
        assert_eq!(neutralised("-2"), "'-2");
        assert_eq!(neutralised("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutralised("Thé vert"), "Thé vert");
    }
}
