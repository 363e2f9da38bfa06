//! Reading import files row by row: CSV as spreadsheets write it (UTF-8 with or without BOM,
//! else Windows-1252; `,`, `;`, tab or `|`, sniffed; quoted fields across lines), JSON arrays,
//! NDJSON and the first sheet of an XLSX workbook. Nothing holds the whole file: each format is
//! parsed on its own thread and hands rows over a bounded channel.
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Columns a file may have (a header row, or the keys of JSON objects).
pub const MAX_COLUMNS: usize = 1000;
/// Longest cell accepted; a longer one is almost always an unterminated quote that swallowed
/// the rest of the file.
pub const MAX_CELL: usize = 64 * 1024;
/// What an XLSX file may decompress to, in all.
pub const MAX_XLSX_UNPACKED: u64 = 256 << 20;
/// Rows handed over ahead of the consumer.
const AHEAD: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Ndjson,
    Xlsx,
}

impl Format {
    /// The format a file name says (`.csv`, `.tsv`, `.txt`, `.json`, `.ndjson`, `.jsonl`, `.xlsx`).
    pub fn of_name(name: &str) -> Option<Format> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        Some(match ext.as_str() {
            "csv" | "tsv" | "txt" => Format::Csv,
            "json" => Format::Json,
            "ndjson" | "jsonl" => Format::Ndjson,
            "xlsx" => Format::Xlsx,
            _ => return None,
        })
    }

    /// The format a file's first bytes say, for a name that says none: a ZIP archive is a
    /// workbook, `[` opens a JSON array, `{` an NDJSON line, anything else is read as CSV
    /// (and refused by analysis if it is not text).
    pub fn sniff(path: &Path) -> Format {
        let mut head = [0u8; 512];
        let n = File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        let head = &head[..n];
        let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
        match text.iter().find(|b| !b.is_ascii_whitespace()) {
            _ if head.starts_with(b"PK\x03\x04") => Format::Xlsx,
            Some(b'[') => Format::Json,
            Some(b'{') => Format::Ndjson,
            _ => Format::Csv,
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::of_name(&format!("f.{s}"))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Xlsx => "xlsx",
        }
    }
}

/// How to read a file: what analysis found, and what the upload asked.
#[derive(Debug, Clone)]
pub struct Layout {
    pub format: Format,
    /// Rows before the header row.
    pub skip_header_rows: u32,
    /// CSV: `utf-8` or `windows-1252`.
    pub encoding: Option<String>,
    pub delimiter: Option<u8>,
    /// The columns; rows come aligned to them.
    pub headers: Vec<String>,
}

/// One data row: its number in the file and its cells, aligned to the headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub row: u64,
    pub cells: Vec<String>,
    /// Why the row cannot be read as a product (too many cells, not an object…).
    pub problem: Option<String>,
}

/// What reading a file yields, in order; an `Err` ends the file (it is damaged past that
/// point).
pub type Item = Result<Row, String>;

/// What analysis learns of a file.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub headers: Vec<String>,
    pub total_rows: u64,
    pub encoding: Option<String>,
    pub delimiter: Option<u8>,
}

/// Reads the whole file once: its encoding and delimiter (CSV), its columns and how many data
/// rows it holds. An `Err` says in words why the file cannot be imported.
pub fn analyze(path: &Path, format: Format, skip_header_rows: u32) -> Result<Analysis, String> {
    let (encoding, delimiter) = match format {
        Format::Csv => {
            let encoding = detect_encoding(path)?;
            let delimiter = sniff_delimiter(path, encoding)?;
            (Some(encoding.name().to_ascii_lowercase()), Some(delimiter))
        }
        _ => (None, None),
    };
    let mut layout = Layout {
        format,
        skip_header_rows,
        encoding: encoding.clone(),
        delimiter,
        headers: Vec::new(),
    };
    if format == Format::Json || format == Format::Ndjson {
        layout.headers = json_keys(path, format)?;
    }
    let mut total = 0u64;
    let mut headers = layout.headers.clone();
    let rows = open(path, &layout, Some(&mut headers))?;
    for item in rows {
        item?;
        total += 1;
    }
    if headers.is_empty() {
        return Err("the file has no header row (or no keys in its objects)".into());
    }
    Ok(Analysis {
        headers,
        total_rows: total,
        encoding,
        delimiter,
    })
}

/// The file's data rows, in order. With `headers_out`, the header row read from the file is
/// stored there (CSV and XLSX); rows are then aligned to it.
pub fn open(
    path: &Path,
    layout: &Layout,
    headers_out: Option<&mut Vec<String>>,
) -> Result<Rows, String> {
    let (header_tx, header_rx) = mpsc::sync_channel::<Vec<String>>(1);
    let (tx, rx) = mpsc::sync_channel::<Item>(AHEAD);
    let path: PathBuf = path.to_path_buf();
    let layout = layout.clone();
    let reader = std::thread::Builder::new()
        .name("pixee-import-read".into())
        .spawn(move || {
            let send = |item: Item| tx.send(item).is_ok();
            let result = match layout.format {
                Format::Csv => read_csv(&path, &layout, &header_tx, &send),
                Format::Xlsx => read_xlsx(&path, &layout, &header_tx, &send),
                Format::Json => {
                    let _ = header_tx.send(layout.headers.clone());
                    read_json_array(&path, &layout.headers, &send)
                }
                Format::Ndjson => {
                    let _ = header_tx.send(layout.headers.clone());
                    read_ndjson(&path, &layout.headers, &send)
                }
            };
            drop(header_tx);
            if let Err(e) = result {
                send(Err(e));
            }
        })
        .map_err(|e| format!("cannot start reading the file: {e}"))?;
    // The header comes first (or the reader ends without one: its error follows in `rx`).
    let headers = header_rx.recv().unwrap_or_default();
    if let Some(out) = headers_out {
        *out = headers;
    }
    Ok(Rows {
        rx: Some(rx),
        reader: Some(reader),
    })
}

/// The rows of a file being read; dropping it stops the reader.
pub struct Rows {
    rx: Option<mpsc::Receiver<Item>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Iterator for Rows {
    type Item = Item;
    fn next(&mut self) -> Option<Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        // The reader's next send fails once the receiver is gone, and it returns.
        self.rx.take();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn io_error(e: std::io::Error) -> String {
    format!("the file could not be read: {e}")
}

/// UTF-8 when the file starts with its BOM or is valid UTF-8 throughout, else Windows-1252
/// (what Excel writes in France). A UTF-16 BOM is honoured too (Excel's "Unicode text").
fn detect_encoding(path: &Path) -> Result<&'static encoding_rs::Encoding, String> {
    let mut file = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_error)?);
    let head = file.fill_buf().map_err(io_error)?;
    if let Some((enc, _)) = encoding_rs::Encoding::for_bom(head) {
        return Ok(enc);
    }
    if head.contains(&0) {
        return Err(
            "the file is not text (it holds NUL bytes): not a CSV, JSON, NDJSON or XLSX file"
                .into(),
        );
    }
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_error)?;
        if n == 0 {
            return Ok(if carry.is_empty() {
                encoding_rs::UTF_8
            } else {
                encoding_rs::WINDOWS_1252
            });
        }
        carry.extend_from_slice(&buf[..n]);
        match std::str::from_utf8(&carry) {
            Ok(_) => carry.clear(),
            // A character cut at the chunk's end: keep its start for the next chunk.
            Err(e) if e.error_len().is_none() => {
                let keep = carry.split_off(e.valid_up_to());
                carry = keep;
            }
            Err(_) => return Ok(encoding_rs::WINDOWS_1252),
        }
    }
}

fn decoded(
    path: &Path,
    encoding: &'static encoding_rs::Encoding,
) -> Result<impl Read + use<>, String> {
    let file = File::open(path).map_err(io_error)?;
    Ok(encoding_rs_io::DecodeReaderBytesBuilder::new()
        .encoding(Some(encoding))
        .bom_override(true)
        .strip_bom(true)
        .build(BufReader::with_capacity(1 << 16, file)))
}

fn encoding_named(name: Option<&str>) -> &'static encoding_rs::Encoding {
    name.and_then(|n| encoding_rs::Encoding::for_label(n.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8)
}

/// The delimiter that splits the first rows most consistently into more than one column.
fn sniff_delimiter(path: &Path, encoding: &'static encoding_rs::Encoding) -> Result<u8, String> {
    let mut sample = Vec::new();
    decoded(path, encoding)?
        .take(64 * 1024)
        .read_to_end(&mut sample)
        .map_err(io_error)?;
    let mut best = (0usize, b',');
    for delimiter in [b';', b',', b'\t', b'|'] {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(sample.as_slice());
        let counts: Vec<usize> = reader
            .byte_records()
            .take(20)
            .filter_map(Result::ok)
            .map(|r| r.len())
            .collect();
        let Some(&first) = counts.first() else {
            continue;
        };
        if first < 2 {
            continue;
        }
        // Columns times the rows that agree with the first one (the sample's last row may be
        // cut short).
        let agree = counts.iter().filter(|&&c| c == first).count();
        let score = first * agree;
        if score > best.0 {
            best = (score, delimiter);
        }
    }
    Ok(best.1)
}

fn read_csv(
    path: &Path,
    layout: &Layout,
    header_tx: &mpsc::SyncSender<Vec<String>>,
    send: &dyn Fn(Item) -> bool,
) -> Result<(), String> {
    let encoding = encoding_named(layout.encoding.as_deref());
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(layout.delimiter.unwrap_or(b','))
        .from_reader(decoded(path, encoding)?);
    let mut record = csv::StringRecord::new();
    let mut number = 0u64;
    let mut headers: Option<Vec<String>> = None;
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                return Err(format!("the CSV could not be read after row {number}: {e}"));
            }
        }
        number += 1;
        if number <= u64::from(layout.skip_header_rows) {
            continue;
        }
        let cells: Vec<String> = record.iter().map(|c| c.trim().to_owned()).collect();
        let Some(header) = &headers else {
            if cells.iter().all(String::is_empty) {
                continue;
            }
            if cells.len() > MAX_COLUMNS {
                return Err(format!(
                    "the header row has {} columns; at most {MAX_COLUMNS} are read",
                    cells.len()
                ));
            }
            let _ = header_tx.send(cells.clone());
            headers = Some(cells);
            continue;
        };
        if cells.iter().all(String::is_empty) {
            continue;
        }
        // The record's number: the row a spreadsheet shows (a quoted cell across lines is
        // one row; blank lines are not rows).
        if !send(Ok(aligned(number, cells, header.len()))) {
            return Ok(());
        }
    }
    Ok(())
}

/// A row's cells fitted to the header's width, with what is wrong with it.
fn aligned(row: u64, mut cells: Vec<String>, width: usize) -> Row {
    let mut problem = None;
    if cells.len() > width && cells[width..].iter().any(|c| !c.is_empty()) {
        problem = Some(format!(
            "the row has {} cells but the header only {width} columns",
            cells.len()
        ));
    }
    if cells.iter().any(|c| c.len() > MAX_CELL) {
        problem = Some(format!(
            "a cell is longer than {MAX_CELL} bytes (an unterminated quote?)"
        ));
        // Keep the report readable.
        for c in &mut cells {
            if c.len() > 200 {
                let mut end = 200;
                while !c.is_char_boundary(end) {
                    end -= 1;
                }
                c.truncate(end);
                c.push('…');
            }
        }
    }
    cells.resize(width, String::new());
    Row {
        row,
        cells,
        problem,
    }
}

/// Refuses an XLSX file whose parts would decompress to more than [`MAX_XLSX_UNPACKED`].
fn check_xlsx_size(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(io_error)?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| format!("the file is not a readable XLSX workbook: {e}"))?;
    let mut total = 0u64;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| format!("the file is not a readable XLSX workbook: {e}"))?;
        total = total.saturating_add(entry.size());
    }
    if total > MAX_XLSX_UNPACKED {
        return Err(format!(
            "the workbook would unpack to {} MiB; at most {} MiB are read",
            total >> 20,
            MAX_XLSX_UNPACKED >> 20
        ));
    }
    Ok(())
}

fn read_xlsx(
    path: &Path,
    layout: &Layout,
    header_tx: &mpsc::SyncSender<Vec<String>>,
    send: &dyn Fn(Item) -> bool,
) -> Result<(), String> {
    use calamine::Reader;
    check_xlsx_size(path)?;
    let file = BufReader::new(File::open(path).map_err(io_error)?);
    let mut book = calamine::Xlsx::new(file)
        .map_err(|e| format!("the file is not a readable XLSX workbook: {e}"))?;
    let Some(first) = book.sheet_names().first().cloned() else {
        return Err("the workbook has no sheet".into());
    };
    let mut cells = book
        .worksheet_cells_reader(&first)
        .map_err(|e| format!("the first sheet could not be read: {e}"))?;
    let mut headers: Option<Vec<String>> = None;
    let mut current: Option<(u32, Vec<String>)> = None;
    let finish = |row: u32, values: Vec<String>, headers: &mut Option<Vec<String>>| -> bool {
        if row < layout.skip_header_rows || values.iter().all(String::is_empty) {
            return true;
        }
        match headers {
            None => {
                let _ = header_tx.send(values.clone());
                *headers = Some(values);
                true
            }
            Some(h) => send(Ok(aligned(u64::from(row) + 1, values, h.len()))),
        }
    };
    loop {
        let cell = cells
            .next_cell()
            .map_err(|e| format!("the first sheet could not be read: {e}"))?;
        let Some(cell) = cell else { break };
        let (row, col) = cell.get_position();
        if col as usize >= MAX_COLUMNS {
            if headers.is_none() {
                return Err(format!(
                    "the header row has more than {MAX_COLUMNS} columns; at most {MAX_COLUMNS} are read"
                ));
            }
            continue;
        }
        if current.as_ref().is_some_and(|(r, _)| *r != row)
            && let Some((r, values)) = current.take()
            && !finish(r, values, &mut headers)
        {
            return Ok(());
        }
        let values = &mut current.get_or_insert_with(|| (row, Vec::new())).1;
        if values.len() <= col as usize {
            values.resize(col as usize + 1, String::new());
        }
        values[col as usize] = xlsx_text(cell.get_value());
    }
    if let Some((r, values)) = current.take() {
        finish(r, values, &mut headers);
    }
    if headers.is_none() {
        return Err("the first sheet is empty".into());
    }
    Ok(())
}

/// A cell's text as a user reads it: whole numbers without a decimal point (EANs are often
/// typed as numbers), the rest as written.
fn xlsx_text(value: &calamine::DataRef<'_>) -> String {
    use calamine::DataRef;
    match value {
        DataRef::Int(i) => i.to_string(),
        DataRef::Float(f) if f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.0}"),
        DataRef::Float(f) => f.to_string(),
        DataRef::String(s) => s.trim().to_owned(),
        DataRef::SharedString(s) => s.trim().to_owned(),
        DataRef::Bool(b) => b.to_string(),
        DataRef::DateTime(d) => d.as_f64().to_string(),
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => s.clone(),
        DataRef::Error(_) | DataRef::Empty => String::new(),
    }
}

/// The keys of a JSON file's objects, in order of first appearance.
fn json_keys(path: &Path, format: Format) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = Vec::new();
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut collect = |value: &serde_json::Value| -> Result<(), String> {
        if let serde_json::Value::Object(map) = value {
            for k in map.keys() {
                if !seen.contains_key(k) {
                    if keys.len() >= MAX_COLUMNS {
                        return Err(format!(
                            "the objects have more than {MAX_COLUMNS} different keys"
                        ));
                    }
                    seen.insert(k.clone(), ());
                    keys.push(k.clone());
                }
            }
        }
        Ok(())
    };
    match format {
        Format::Json => each_json_element(path, &mut |_, v| collect(&v).map(|()| true))?,
        _ => each_ndjson_line(path, &mut |_, v| {
            if let Ok(v) = v {
                collect(&v)?;
            }
            Ok(true)
        })?,
    }
    Ok(keys)
}

/// JSON cells: strings as they are, numbers and booleans as written, lists joined with `|`,
/// objects as JSON.
fn json_cells(value: &serde_json::Value, headers: &[String], row: u64) -> Row {
    use serde_json::Value;
    let Value::Object(map) = value else {
        return Row {
            row,
            cells: vec![String::new(); headers.len()],
            problem: Some("each element must be a JSON object".into()),
        };
    };
    let text = |v: &Value| -> String {
        match v {
            Value::Null => String::new(),
            Value::String(s) => s.trim().to_owned(),
            Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("|"),
            other => other.to_string(),
        }
    };
    let cells = headers
        .iter()
        .map(|h| map.get(h).map(text).unwrap_or_default())
        .collect();
    aligned(row, cells, headers.len())
}

/// Calls `each` with every element of a top-level JSON array, parsed one at a time.
fn each_json_element(
    path: &Path,
    each: &mut dyn FnMut(u64, serde_json::Value) -> Result<bool, String>,
) -> Result<(), String> {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    struct Elements<'a> {
        each: &'a mut dyn FnMut(u64, serde_json::Value) -> Result<bool, String>,
    }
    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = Result<(), String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of product objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut n = 0u64;
            while let Some(value) = seq.next_element::<serde_json::Value>()? {
                n += 1;
                match (self.each)(n, value) {
                    Ok(true) => {}
                    Ok(false) => return Ok(Ok(())),
                    Err(e) => return Ok(Err(e)),
                }
            }
            Ok(Ok(()))
        }
    }
    let file = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_error)?);
    let mut de = serde_json::Deserializer::from_reader(file);
    let result = de
        .deserialize_seq(Elements { each })
        .map_err(|e| format!("the JSON could not be read: {e}"))?;
    result?;
    Ok(())
}

fn read_json_array(
    path: &Path,
    headers: &[String],
    send: &dyn Fn(Item) -> bool,
) -> Result<(), String> {
    each_json_element(path, &mut |n, value| {
        Ok(send(Ok(json_cells(&value, headers, n))))
    })
}

/// Calls `each` with every non-blank line of an NDJSON file, parsed (or why not).
fn each_ndjson_line(
    path: &Path,
    each: &mut dyn FnMut(u64, Result<serde_json::Value, String>) -> Result<bool, String>,
) -> Result<(), String> {
    let mut file = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_error)?);
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let read = file
            .by_ref()
            .take(MAX_CELL as u64 * 16)
            .read_until(b'\n', &mut line)
            .map_err(io_error)?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if !line.ends_with(b"\n") && read == MAX_CELL * 16 {
            return Err(format!("line {n} is longer than {} bytes", MAX_CELL * 16));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value = serde_json::from_slice::<serde_json::Value>(&line)
            .map_err(|e| format!("line {n} is not valid JSON: {e}"));
        if !each(n, value)? {
            return Ok(());
        }
    }
}

fn read_ndjson(path: &Path, headers: &[String], send: &dyn Fn(Item) -> bool) -> Result<(), String> {
    each_ndjson_line(path, &mut |n, value| {
        let row = match value {
            Ok(v) => json_cells(&v, headers, n),
            Err(problem) => Row {
                row: n,
                cells: vec![String::new(); headers.len()],
                problem: Some(problem),
            },
        };
        Ok(send(Ok(row)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn rows_of(path: &Path, format: Format) -> (Analysis, Vec<Row>) {
        let a = analyze(path, format, 0).unwrap();
        let layout = Layout {
            format,
            skip_header_rows: 0,
            encoding: a.encoding.clone(),
            delimiter: a.delimiter,
            headers: a.headers.clone(),
        };
        let rows = open(path, &layout, None)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (a, rows)
    }

    #[test]
    fn windows_1252_semicolons_and_quoted_newlines_are_read_as_excel_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        // "Désignation;Prix\r\n"Crème\r\nbrûlée";12,50\r\n" in Windows-1252.
        let (bytes, _, _) = encoding_rs::WINDOWS_1252
            .encode("EAN;Désignation;Prix\r\n4006381333931;\"Crème\r\nbrûlée\";12,50\r\n");
        let path = write(&dir, "f.csv", &bytes);
        let (a, rows) = rows_of(&path, Format::Csv);
        assert_eq!(a.encoding.as_deref(), Some("windows-1252"));
        assert_eq!(a.delimiter, Some(b';'));
        assert_eq!(a.headers, ["EAN", "Désignation", "Prix"]);
        assert_eq!(a.total_rows, 1);
        assert_eq!(rows[0].cells, ["4006381333931", "Crème\r\nbrûlée", "12,50"]);
        assert_eq!(rows[0].row, 2);
    }

    #[test]
    fn a_utf8_bom_is_dropped_and_commas_are_sniffed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "f.csv",
            "\u{feff}ean,name\n1,Thé\n\n2,Café\n".as_bytes(),
        );
        let (a, rows) = rows_of(&path, Format::Csv);
        assert_eq!(a.encoding.as_deref(), Some("utf-8"));
        assert_eq!(a.delimiter, Some(b','));
        assert_eq!(a.headers, ["ean", "name"]);
        assert_eq!(a.total_rows, 2, "the blank line is not a row");
        assert_eq!(rows[1].cells, ["2", "Café"]);
        assert_eq!(rows[1].row, 3, "the third record");
    }

    #[test]
    fn json_arrays_and_ndjson_give_their_keys_as_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "f.json",
            br#"[{"ean": 4006381333931, "name": "A"}, {"name": "B", "tags": ["x", "y"]}, 7]"#,
        );
        let (a, rows) = rows_of(&path, Format::Json);
        assert_eq!(a.headers, ["ean", "name", "tags"]);
        assert_eq!(rows[0].cells, ["4006381333931", "A", ""]);
        assert_eq!(rows[1].cells, ["", "B", "x|y"]);
        assert!(rows[2].problem.is_some());
        let path = write(
            &dir,
            "f.ndjson",
            b"{\"ean\":\"1\"}\n\nnot json\n{\"name\":\"Z\"}\n",
        );
        let (a, rows) = rows_of(&path, Format::Ndjson);
        assert_eq!(a.headers, ["ean", "name"]);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].row, 3);
        assert!(rows[1].problem.as_deref().unwrap().contains("line 3"));
        assert_eq!(rows[2].cells, ["", "Z"]);
    }

    #[test]
    fn rows_wider_than_the_header_and_runaway_quotes_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let mut body = String::from("ean;name\n1;a;b;c\n2;\"");
        body.push_str(&"x".repeat(MAX_CELL + 10));
        let path = write(&dir, "f.csv", body.as_bytes());
        let (_, rows) = rows_of(&path, Format::Csv);
        assert!(rows[0].problem.as_deref().unwrap().contains("4 cells"));
        assert!(rows[1].problem.as_deref().unwrap().contains("unterminated"));
    }

    #[test]
    fn files_that_are_not_what_they_say_are_refused_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        let path = write(&dir, "f.xlsx", &noise);
        let e = analyze(&path, Format::Xlsx, 0).unwrap_err();
        assert!(e.contains("not a readable XLSX"), "{e}");
        assert_eq!(
            Format::sniff(&path),
            Format::Csv,
            "noise is no known format"
        );
        let png = write(&dir, "p", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
        let e = analyze(&png, Format::sniff(&png), 0).unwrap_err();
        assert!(e.contains("not text"), "{e}");
        let path = write(&dir, "g.json", b"{\"not\": \"an array\"}");
        assert_eq!(Format::sniff(&path), Format::Ndjson);
        assert!(analyze(&path, Format::Json, 0).is_err());
        let wide = (0..MAX_COLUMNS + 1)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(";");
        let path = write(&dir, "w.csv", wide.as_bytes());
        let e = analyze(&path, Format::Csv, 0).unwrap_err();
        assert!(e.contains("columns"), "{e}");
    }
}
