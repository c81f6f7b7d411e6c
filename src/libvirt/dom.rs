//! A small owned XML tree for libvirt's domain and volume documents.
//!
//! libvirt XML has no namespaces except in `<metadata>`, comments matter to operators, and
//! documents are a few KiB: an owned tree read with quick-xml and written back with the
//! original (escaped) text and attribute values keeps everything we do not touch byte-for-byte
//! and makes the edits plain code.

use quick_xml::escape::{escape, unescape};
use quick_xml::events::Event;
use quick_xml::Reader;

#[derive(Debug, thiserror::Error)]
#[error("malformed XML: {0}")]
pub struct XmlError(String);

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Element(Element),
    /// Text as it was in the document (still escaped).
    Text(String),
    Comment(String),
    CData(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub name: String,
    /// Attribute values as in the document (still escaped).
    attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// Parses a document and returns its root element (declarations, PIs and the doctype are
/// dropped; libvirt does not use them).
pub fn parse(text: &str) -> Result<Element, XmlError> {
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let err = |e: &dyn std::fmt::Display| XmlError(e.to_string());
    loop {
        let ev = reader.read_event().map_err(|e| err(&e))?;
        match ev {
            Event::Start(s) | Event::Empty(s) if root.is_some() => {
                let _ = s;
                return Err(XmlError("content after the root element".into()));
            }
            Event::Start(s) => {
                stack.push(start_element(&s)?);
            }
            Event::Empty(s) => {
                let el = start_element(&s)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::End(e) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                if el.name != e.name().as_ref() {
                    return Err(XmlError(format!(
                        "</{}> closes <{}>",
                        e.name().as_ref(),
                        el.name
                    )));
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                check_chars(&t)?;
                if let Some(parent) = stack.last_mut() {
                    push_text(parent, &t.into_inner());
                } else if !t.into_inner().trim().is_empty() {
                    return Err(XmlError("text outside the root element".into()));
                }
            }
            Event::GeneralRef(r) => {
                if let Some(parent) = stack.last_mut() {
                    let raw = format!("&{};", r.into_inner());
                    check_chars(&unescape(&raw).map_err(|e| err(&e))?)?;
                    push_text(parent, &raw);
                }
            }
            Event::CData(c) => {
                check_chars(&c)?;
                if let Some(parent) = stack.last_mut() {
                    parent
                        .children
                        .push(Node::CData(c.into_inner().into_owned()));
                }
            }
            Event::Comment(c) => {
                check_chars(&c)?;
                if let Some(parent) = stack.last_mut() {
                    parent
                        .children
                        .push(Node::Comment(c.into_inner().into_owned()));
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError(format!("<{}> is never closed", stack[0].name)));
    }
    root.ok_or_else(|| XmlError("no root element".into()))
}

fn push_text(parent: &mut Element, raw: &str) {
    if let Some(Node::Text(prev)) = parent.children.last_mut() {
        prev.push_str(raw);
    } else {
        parent.children.push(Node::Text(raw.to_string()));
    }
}

/// An XML name (letters, digits, `_ : - .`, not starting with a digit, `-` or `.`).
/// quick-xml accepts `<>` and other names that cannot be written back.
fn check_name(name: &str, what: &str) -> Result<(), XmlError> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(XmlError(format!("invalid {what} name {name:?}")))
    }
}

/// XML 1.0 forbids control characters other than tab, newline and carriage return.
fn check_chars(s: &str) -> Result<(), XmlError> {
    match s
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some(c) => Err(XmlError(format!(
            "control character U+{:04X} is not allowed in XML",
            c as u32
        ))),
        None => Ok(()),
    }
}

fn start_element(s: &quick_xml::events::BytesStart<'_>) -> Result<Element, XmlError> {
    let name = s.name().as_ref().to_string();
    check_name(&name, "element")?;
    let mut attrs = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| XmlError(e.to_string()))?;
        // Checked as written back: unescaped (`&#11;` is a control character too).
        check_chars(&unescape(&a.value).map_err(|e| XmlError(e.to_string()))?)?;
        let key = a.key.as_ref().to_string();
        check_name(&key, "attribute")?;
        attrs.push((key, a.value.into_owned()));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
    })
}

impl Element {
    pub fn new(name: &str) -> Self {
        Element {
            name: name.to_string(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: an attribute (unescaped value).
    pub fn with_attr(mut self, key: &str, value: &str) -> Self {
        self.set_attr(key, value);
        self
    }

    /// Builder: text content (unescaped).
    pub fn with_text(mut self, text: &str) -> Self {
        self.set_text(text);
        self
    }

    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// An attribute's value, unescaped.
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| unescape(v).map(|c| c.into_owned()).unwrap_or_default())
    }

    pub fn set_attr(&mut self, key: &str, value: &str) {
        let v = escape(value).into_owned();
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.attrs.push((key.to_string(), v)),
        }
    }

    pub fn remove_attr(&mut self, key: &str) {
        self.attrs.retain(|(k, _)| k != key);
    }

    /// The element's own text, unescaped and trimmed.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.children {
            match c {
                Node::Text(t) => {
                    out.push_str(&unescape(t).map(|c| c.into_owned()).unwrap_or_default())
                }
                Node::CData(t) => out.push_str(t),
                _ => {}
            }
        }
        out.trim().to_string()
    }

    /// Replaces all text (and any child elements) with `text`.
    pub fn set_text(&mut self, text: &str) {
        self.children.retain(|c| matches!(c, Node::Comment(_)));
        self.children.push(Node::Text(escape(text).into_owned()));
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.name == name)
    }

    /// The child `name`, made (appended) if missing.
    pub fn child_or_insert(&mut self, name: &str) -> &mut Element {
        if self.child(name).is_none() {
            self.children.push(Node::Element(Element::new(name)));
        }
        self.child_mut(name).expect("just inserted")
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|c| match c {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|c| match c {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// Removes the child elements for which `drop` is true (with the whitespace before them).
    pub fn remove_children(&mut self, mut drop: impl FnMut(&Element) -> bool) {
        let mut out: Vec<Node> = Vec::with_capacity(self.children.len());
        for c in std::mem::take(&mut self.children) {
            match &c {
                Node::Element(e) if drop(e) => {
                    if matches!(out.last(), Some(Node::Text(t)) if t.trim().is_empty()) {
                        out.pop();
                    }
                }
                _ => out.push(c),
            }
        }
        self.children = out;
    }

    /// Appends a child element before the closing whitespace, indented like its siblings.
    pub fn append(&mut self, child: Element) {
        let indent = self.children.iter().find_map(|c| match c {
            Node::Text(t) if t.trim().is_empty() && t.contains('\n') => Some(t.clone()),
            _ => None,
        });
        let trailing = match self.children.last() {
            Some(Node::Text(t)) if t.trim().is_empty() => self.children.pop(),
            _ => None,
        };
        if let Some(i) = indent {
            self.children.push(Node::Text(i));
        }
        self.children.push(Node::Element(child));
        if let Some(t) = trailing {
            self.children.push(t);
        }
    }

    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("=\"");
            // Stored escaped; a raw `"` cannot appear in a value that was single-quoted
            // unless it was written as such, so re-quote it.
            out.push_str(&v.replace('"', "&quot;"));
            out.push('"');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for c in &self.children {
            match c {
                Node::Element(e) => e.write(out),
                Node::Text(t) => out.push_str(t),
                Node::Comment(t) => {
                    out.push_str("<!--");
                    out.push_str(t);
                    out.push_str("-->");
                }
                Node::CData(t) => {
                    out.push_str("<![CDATA[");
                    out.push_str(t);
                    out.push_str("]]>");
                }
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzz/domain_xml: `<></>` and control characters were accepted, and the
    /// rewritten XML did not parse again.
    #[test]
    fn refuses_what_it_could_not_write_back() {
        for bad in [
            "<domain><></></domain>",
            "<domain><name>a\u{0}b</name></domain>",
            "<domain><log file='x\u{7}'/></domain>",
            "<domain><log \u{7}file='x'/></domain>",
            "<domain><1x/></domain>",
            "<domain><name>a&#11;b</name></domain>",
            "<domain><log file='x&#0B;'/></domain>",
            "<domain><log file='x&#x0B;'/></domain>",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
        let ok = parse("<domain><name>tab\tand\nnewline</name><ns:x a-b.c='1'/></domain>").unwrap();
        assert_eq!(parse(&ok.to_xml()).unwrap(), ok);
    }

    #[test]
    fn round_trip_keeps_text_comments_and_escapes() {
        let doc = "<domain type='kvm'>\n  <!-- keep me -->\n  <name>a&amp;b</name>\n  <description>x &lt; y</description>\n  <metadata>\n    <libosinfo:libosinfo xmlns:libosinfo=\"http://libosinfo.org/xmlns/libvirt/domain/1.0\"><libosinfo:os id=\"http://debian.org/debian/12\"/></libosinfo:libosinfo>\n  </metadata>\n</domain>";
        let root = parse(doc).unwrap();
        assert_eq!(root.child("name").unwrap().text(), "a&b");
        assert_eq!(root.child("description").unwrap().text(), "x < y");
        let out = root.to_xml();
        assert_eq!(parse(&out).unwrap(), root);
        assert!(out.contains("<!-- keep me -->"));
        assert!(out.contains("<libosinfo:os id=\"http://debian.org/debian/12\"/>"));
        assert!(out.contains("<name>a&amp;b</name>"));
    }

    #[test]
    fn edits() {
        let mut root = parse("<a>\n  <b x='1'/>\n  <c/>\n</a>").unwrap();
        root.child_mut("b").unwrap().set_attr("x", "<\"2\">");
        assert_eq!(root.child("b").unwrap().attr("x").unwrap(), "<\"2\">");
        root.remove_children(|e| e.name == "c");
        root.append(Element::new("d").with_text("t&t"));
        assert_eq!(
            root.to_xml(),
            "<a>\n  <b x=\"&lt;&quot;2&quot;&gt;\"/>\n  <d>t&amp;t</d>\n</a>"
        );
    }

    #[test]
    fn malformed_is_an_error() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "text",
            "<a x='&bogus;'/>",
            "<a>&nope;</a>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
