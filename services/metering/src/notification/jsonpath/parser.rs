//! The grammar of `jsonpath_rw_ext`, as a precedence-climbing parser that groups exactly as its
//! LALR tables do. Binary operators, loosest first: `+ -`, `* /`, `..`, `.`, `|`, `where`
//! (all left-associative); a bracket (`[0]`, `[*]`, `[?…]`) binds to what is just before it.
//! A lone field beside an arithmetic operator is a string (`$.a + "_"`, `'x' + 'y'`), as in
//! `jsonpath_rw_ext`.

use fancy_regex::Regex;
use serde_json::Value;

use super::lexer::{tokenize, Tok};
use super::{ParseError, MAX_EXPRESSION_LEN, MAX_NESTING};

/// An arithmetic operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// A filter's comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `~`: Python's `re.match(value, target)`.
    Matches,
}

/// A filter's right-hand side: its type decides the comparison (see `pyops`).
#[derive(Clone, Debug)]
pub(super) enum FilterValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// One condition of a filter: the target path, and what its matches must satisfy (any match
/// will do; with no test, having a match is enough).
#[derive(Clone, Debug)]
pub(super) struct Condition {
    pub(super) target: Node,
    pub(super) test: Option<(CmpOp, FilterValue, Option<Regex>)>,
}

/// An operand of arithmetic: a path (evaluated per match) or a constant.
#[derive(Clone, Debug)]
pub(super) enum Operand {
    Path(Node),
    Const(Value),
}

#[derive(Clone, Debug)]
pub(super) enum Node {
    Root,
    This,
    /// Field names; `*` means every field.
    Fields(Vec<String>),
    Index(i64),
    Slice(Option<i64>, Option<i64>),
    Child(Box<Node>, Box<Node>),
    Descendants(Box<Node>, Box<Node>),
    Where(Box<Node>, Box<Node>),
    Union(Box<Node>, Box<Node>),
    Filter(Vec<Condition>),
    Operation(Box<Operand>, ArithOp, Box<Operand>),
    Len,
    Sorted,
    Split {
        separator: char,
        segment: usize,
        max_split: i64,
    },
    Sub {
        regex: Regex,
        replacement: String,
    },
    /// A number standing alone: only valid as an operand of arithmetic.
    Number(Value),
}

/// Parses a whole expression.
pub(super) fn parse(text: &str) -> Result<Node, ParseError> {
    if text.len() > MAX_EXPRESSION_LEN {
        return Err(ParseError {
            expression: text.chars().take(64).collect(),
            position: 0,
            message: format!("longer than {MAX_EXPRESSION_LEN} bytes"),
        });
    }
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        text,
        tokens,
        at: 0,
        depth: 0,
    };
    if parser.tokens.is_empty() {
        return Err(parser.error("empty expression"));
    }
    let node = parser.expression(0, false)?;
    if parser.at < parser.tokens.len() {
        return Err(parser.error("unexpected token"));
    }
    parser.path(node)
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<(Tok, usize)>,
    at: usize,
    depth: usize,
}

/// Binding power of a binary operator token (higher binds tighter).
fn binary_power(tok: &Tok) -> Option<u8> {
    match tok {
        Tok::Plus | Tok::Minus => Some(1),
        Tok::Star | Tok::Slash => Some(2),
        Tok::DoubleDot => Some(3),
        Tok::Dot => Some(4),
        Tok::Pipe => Some(5),
        Tok::Amp => Some(6),
        Tok::Where => Some(7),
        _ => None,
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn bump(&mut self) -> Option<Tok> {
        let tok = self.tokens.get(self.at).map(|(t, _)| t.clone());
        if tok.is_some() {
            self.at += 1;
        }
        tok
    }

    fn error(&self, message: &str) -> ParseError {
        let position = self
            .tokens
            .get(self.at)
            .map_or(self.text.len(), |(_, p)| *p);
        let near = match self.tokens.get(self.at) {
            Some((tok, _)) => format!("{message} near {tok:?}"),
            None => format!("{message} at the end"),
        };
        ParseError {
            expression: self.text.to_owned(),
            position,
            message: near,
        }
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<(), ParseError> {
        if self.peek() == Some(tok) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {what}")))
        }
    }

    /// `node` as a path: a number alone is not one.
    fn path(&self, node: Node) -> Result<Node, ParseError> {
        match node {
            Node::Number(_) => Err(self.error("a number is not a path")),
            node => Ok(node),
        }
    }

    /// Precedence climbing. In a filter (`in_filter`), `&` joins conditions instead.
    fn expression(&mut self, min_power: u8, in_filter: bool) -> Result<Node, ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.error("expression nested too deeply"));
        }
        let mut left = self.postfix()?;
        while let Some(tok) = self.peek().cloned() {
            let Some(power) = binary_power(&tok) else {
                break;
            };
            if power < min_power || (in_filter && tok == Tok::Amp) {
                break;
            }
            self.at += 1;
            let right = self.expression(power + 1, in_filter)?;
            left = match tok {
                Tok::Plus => arithmetic(left, ArithOp::Add, right),
                Tok::Minus => arithmetic(left, ArithOp::Sub, right),
                Tok::Star => arithmetic(left, ArithOp::Mul, right),
                Tok::Slash => arithmetic(left, ArithOp::Div, right),
                Tok::Amp => {
                    return Err(self.error("`&` (intersection) is not supported outside filters"))
                }
                _ => {
                    let (left, right) = (Box::new(self.path(left)?), Box::new(self.path(right)?));
                    match tok {
                        Tok::DoubleDot => Node::Descendants(left, right),
                        Tok::Dot => Node::Child(left, right),
                        Tok::Pipe => Node::Union(left, right),
                        _ => Node::Where(left, right),
                    }
                }
            };
        }
        self.depth -= 1;
        Ok(left)
    }

    /// A primary followed by any brackets.
    fn postfix(&mut self) -> Result<Node, ParseError> {
        let mut node = self.primary()?;
        while self.peek() == Some(&Tok::LBracket) {
            self.at += 1;
            let inner = self.bracket()?;
            node = Node::Child(Box::new(self.path(node)?), Box::new(inner));
        }
        Ok(node)
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        match self.bump() {
            Some(Tok::Dollar) => Ok(Node::Root),
            Some(Tok::At) => Ok(Node::This),
            Some(Tok::Star) => Ok(Node::Fields(vec!["*".to_owned()])),
            Some(Tok::Id(name) | Tok::Quoted(name)) => {
                let mut fields = vec![name];
                self.more_fields(&mut fields)?;
                Ok(Node::Fields(fields))
            }
            Some(Tok::Number(n)) => Ok(Node::Number(Value::from(n))),
            Some(Tok::Float(f)) => Ok(Node::Number(
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            )),
            Some(Tok::Named(name)) => self.named(&name),
            Some(Tok::LParen) => {
                let inner = self.expression(0, false)?;
                self.expect(&Tok::RParen, "`)`")?;
                Ok(inner)
            }
            Some(Tok::LBracket) => self.bracket(),
            _ => {
                self.at = self.at.saturating_sub(1);
                Err(self.error("expected a path"))
            }
        }
    }

    /// `, name` repeated.
    fn more_fields(&mut self, fields: &mut Vec<String>) -> Result<(), ParseError> {
        while self.peek() == Some(&Tok::Comma) {
            self.at += 1;
            match self.bump() {
                Some(Tok::Id(name) | Tok::Quoted(name)) => fields.push(name),
                _ => {
                    self.at = self.at.saturating_sub(1);
                    return Err(self.error("expected a field name after `,`"));
                }
            }
        }
        Ok(())
    }

    /// What follows `[`, through `]`.
    fn bracket(&mut self) -> Result<Node, ParseError> {
        let node = match self.peek().cloned() {
            Some(Tok::Star) => {
                self.at += 1;
                Node::Slice(None, None)
            }
            Some(Tok::Question) => {
                self.at += 1;
                Node::Filter(self.conditions()?)
            }
            Some(Tok::Id(name) | Tok::Quoted(name)) => {
                self.at += 1;
                let mut fields = vec![name];
                self.more_fields(&mut fields)?;
                Node::Fields(fields)
            }
            Some(Tok::Number(_) | Tok::Colon) => {
                let start = self.maybe_int();
                if self.peek() == Some(&Tok::Colon) {
                    self.at += 1;
                    let end = self.maybe_int();
                    Node::Slice(start, end)
                } else {
                    match start {
                        Some(index) => Node::Index(index),
                        None => return Err(self.error("expected an index")),
                    }
                }
            }
            _ => return Err(self.error("expected an index, `*`, fields or a filter")),
        };
        self.expect(&Tok::RBracket, "`]`")?;
        Ok(node)
    }

    fn maybe_int(&mut self) -> Option<i64> {
        if let Some(Tok::Number(n)) = self.peek() {
            let n = *n;
            self.at += 1;
            Some(n)
        } else {
            None
        }
    }

    /// `condition (& condition)*`, a parenthesised group counting as one.
    fn conditions(&mut self) -> Result<Vec<Condition>, ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.error("filter nested too deeply"));
        }
        let mut all = Vec::new();
        loop {
            if self.peek() == Some(&Tok::LParen) {
                self.at += 1;
                all.extend(self.conditions()?);
                self.expect(&Tok::RParen, "`)`")?;
            } else {
                all.push(self.condition()?);
            }
            if self.peek() == Some(&Tok::Amp) {
                self.at += 1;
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(all)
    }

    fn condition(&mut self) -> Result<Condition, ParseError> {
        let target = self.expression(0, true)?;
        let target = self.path(target)?;
        let Some(Tok::FilterOp(op)) = self.peek().cloned() else {
            return Ok(Condition { target, test: None });
        };
        self.at += 1;
        let op = match op.as_str() {
            "=" | "==" => CmpOp::Eq,
            "!=" => CmpOp::Ne,
            "<" => CmpOp::Lt,
            "<=" => CmpOp::Le,
            ">" => CmpOp::Gt,
            ">=" => CmpOp::Ge,
            _ => CmpOp::Matches,
        };
        let value = match self.bump() {
            Some(Tok::Id(word)) if word == "true" => FilterValue::Bool(true),
            Some(Tok::Id(word)) if word == "false" => FilterValue::Bool(false),
            Some(Tok::Id(s) | Tok::Quoted(s)) => FilterValue::Str(s),
            Some(Tok::Number(n)) => FilterValue::Int(n),
            Some(Tok::Float(f)) => FilterValue::Float(f),
            _ => {
                self.at = self.at.saturating_sub(1);
                return Err(self.error("expected a value to compare with"));
            }
        };
        let regex = match (&op, &value) {
            (CmpOp::Matches, FilterValue::Str(pattern)) => Some(
                Regex::new(&format!("^(?:{pattern})"))
                    .map_err(|e| self.error(&format!("bad regex {pattern:?}: {e}")))?,
            ),
            _ => None,
        };
        Ok(Condition {
            target,
            test: Some((op, value, regex)),
        })
    }

    /// A backquoted operator.
    fn named(&mut self, name: &str) -> Result<Node, ParseError> {
        match name {
            "this" => Ok(Node::This),
            "len" => Ok(Node::Len),
            "sorted" => Ok(Node::Sorted),
            "parent" => Err(self.error("`parent` is not supported")),
            _ if name.starts_with("split(") => parse_split(name).ok_or_else(|| {
                self.error(&format!(
                    "`{name}` is not split(<one character>, <segment>, <max split or -1>)"
                ))
            }),
            _ if name.starts_with("sub(") => parse_sub(name).map_err(|e| self.error(&e)),
            _ => Err(self.error(&format!("unknown named operator `{name}`"))),
        }
    }
}

/// `jsonpath_rw_ext`'s rule: a lone field beside an arithmetic operator is a string.
fn arithmetic(left: Node, op: ArithOp, right: Node) -> Node {
    Node::Operation(Box::new(operand(left)), op, Box::new(operand(right)))
}

fn operand(node: Node) -> Operand {
    match node {
        Node::Fields(mut fields) if fields.len() == 1 => {
            Operand::Const(Value::String(fields.pop().unwrap_or_default()))
        }
        Node::Number(n) => Operand::Const(n),
        node => Operand::Path(node),
    }
}

/// `split(c, segment, max)`: `split\((.),\s+(\d+),\s+(\d+|-1)\)`, matched at the start.
fn parse_split(text: &str) -> Option<Node> {
    let pattern = regex::Regex::new(r"^split\((.),\s+(\d+),\s+(\d+|-1)\)").ok()?;
    let captures = pattern.captures(text)?;
    let separator = captures.get(1)?.as_str().chars().next()?;
    let segment = captures.get(2)?.as_str().parse().ok()?;
    let max_split = captures.get(3)?.as_str().parse().ok()?;
    Some(Node::Split {
        separator,
        segment,
        max_split,
    })
}

/// `sub(/regex/, replacement)`: `sub\(/(.*)/,\s+(.*)\)`, matched at the start, both parts
/// stripped; the replacement in Python's syntax (`\1`, `\g<name>`).
fn parse_sub(text: &str) -> Result<Node, String> {
    let pattern =
        regex::Regex::new(r"^sub\(/(.*)/,\s+(.*)\)").map_err(|e| format!("internal error: {e}"))?;
    let captures = pattern
        .captures(text)
        .ok_or_else(|| format!("`{text}` is not sub(/<regex>/, <replacement>)"))?;
    let expr = captures.get(1).map_or("", |m| m.as_str()).trim();
    let replacement = captures.get(2).map_or("", |m| m.as_str()).trim();
    let regex = Regex::new(expr).map_err(|e| format!("bad regex {expr:?} in `{text}`: {e}"))?;
    Ok(Node::Sub {
        regex,
        replacement: python_replacement(replacement),
    })
}

/// A Python `re.sub` replacement in `fancy_regex`'s syntax: `\1` and `\g<x>` become `${x}`,
/// `$` is escaped, `\n`, `\t` and `\\` are read as Python reads them.
fn python_replacement(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.next() {
                Some(d) if d.is_ascii_digit() => {
                    let mut group = d.to_string();
                    if let Some(e) = chars.peek().copied().filter(char::is_ascii_digit) {
                        group.push(e);
                        chars.next();
                    }
                    out.push_str(&format!("${{{group}}}"));
                }
                Some('g') if chars.peek() == Some(&'<') => {
                    chars.next();
                    let name: String = chars.by_ref().take_while(|&c| c != '>').collect();
                    out.push_str(&format!("${{{name}}}"));
                }
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}
