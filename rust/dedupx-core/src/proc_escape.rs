//! Paths as /proc prints them (`mountinfo`, `swaps`): the kernel escapes spaces, tabs,
//! newlines and backslashes as three octal digits (`\040`).

pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescapes_octal_and_keeps_the_rest() {
        assert_eq!(super::unescape_octal("/a\\040b\\\\c\\9"), "/a b\\\\c\\9");
    }
}
