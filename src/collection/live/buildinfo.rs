//! Is this executable CNCF Distribution's registry? Read from the Go build info the Go linker
//! embeds in every binary (section `.go.buildinfo`, starting with the magic `\xff Go buildinf:`),
//! which names the main package (`path\t...`) and module (`mod\t...`). A renamed copy
//! (Harbor's `registry_DO_NOT_USE_GC`) or an `exec -a` argv still carries it.
//!
//! Only the ELF header, the section headers, their name table and the build info itself are
//! read (a few KiB), never the whole 20 MB binary.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The magic at the start of Go's build info.
const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Module paths of Distribution (v2 at Docker, v3 at the CNCF).
const DISTRIBUTION: [&str; 2] = [
    "github.com/docker/distribution",
    "github.com/distribution/distribution",
];
/// Upper bound on what is read for one section or string (a build info with hundreds of
/// dependencies is tens of KiB).
const MAX_READ: u64 = 1 << 20;
/// Upper bound on the number of section headers read.
const MAX_SECTIONS: u64 = 4096;

/// What an executable is, as far as the live guard needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExeKind {
    /// Its Go build info names Distribution (the main package path, kept for the report).
    Distribution(String),
    /// Something else for sure: a Go program of another module, or no Go program at all.
    Other,
    /// Cannot tell (not ELF, a Go binary too old to carry a module path, or unreadable):
    /// the caller falls back to the process name.
    Unknown,
}

/// Classifies the executable open in `f`.
pub fn classify(f: &File) -> ExeKind {
    let Some(elf) = Elf::read(f) else {
        return ExeKind::Unknown;
    };
    let Some(info) = elf.section(f, ".go.buildinfo") else {
        // Go binaries older than 1.13 have no build info; they still have these.
        let go = elf.has_section(".gopclntab") || elf.has_section(".note.go.buildid");
        return if go { ExeKind::Unknown } else { ExeKind::Other };
    };
    match modinfo(f, &elf, &info) {
        Some(m) => classify_modinfo(&m),
        None => ExeKind::Unknown,
    }
}

/// Classifies the text of Go's module info (`path`, `mod`, `dep`, `build` lines). Only the
/// main package and main module count: many programs (skopeo, Harbor's core) merely depend on
/// Distribution (`dep` lines).
pub fn classify_modinfo(modinfo: &str) -> ExeKind {
    let mut known = false;
    for line in modinfo.lines() {
        let mut f = line.split('\t');
        let (Some(kind), Some(path)) = (f.next(), f.next()) else {
            continue;
        };
        if kind != "path" && kind != "mod" {
            continue;
        }
        known = true;
        if DISTRIBUTION
            .iter()
            .any(|d| path == *d || path.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
        {
            return ExeKind::Distribution(path.to_string());
        }
    }
    if known {
        ExeKind::Other
    } else {
        ExeKind::Unknown
    }
}

/// The parts of an ELF file needed here.
struct Elf {
    little: bool,
    wide: bool,
    sections: Vec<Section>,
}

/// One section header.
#[derive(Debug, Clone)]
struct Section {
    name: String,
    addr: u64,
    offset: u64,
    size: u64,
    nobits: bool,
}

fn read_at(f: &File, offset: u64, len: u64) -> Option<Vec<u8>> {
    if len > MAX_READ {
        return None;
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

impl Elf {
    /// Reads the ELF header and the section headers with their names.
    fn read(f: &File) -> Option<Elf> {
        let id = read_at(f, 0, 16)?;
        if &id[..4] != b"\x7fELF" {
            return None;
        }
        let wide = match id[4] {
            1 => false,
            2 => true,
            _ => return None,
        };
        let little = match id[5] {
            1 => true,
            2 => false,
            _ => return None,
        };
        let mut elf = Elf {
            little,
            wide,
            sections: Vec::new(),
        };
        let hdr = read_at(f, 0, if wide { 64 } else { 52 })?;
        let (shoff, rest) = if wide {
            (elf.u64(&hdr[40..48]), &hdr[58..64])
        } else {
            (elf.u32(&hdr[32..36]) as u64, &hdr[46..52])
        };
        let shentsize = elf.u16(&rest[0..2]) as u64;
        let shnum = elf.u16(&rest[2..4]) as u64;
        let shstrndx = elf.u16(&rest[4..6]) as usize;
        let min = if wide { 64 } else { 40 };
        if shoff == 0 || shnum == 0 || shnum > MAX_SECTIONS || shentsize < min {
            return None;
        }
        let table = read_at(f, shoff, shentsize * shnum)?;
        let raw: Vec<(u32, Section)> = table
            .chunks_exact(shentsize as usize)
            .map(|h| elf.section_header(h))
            .collect();
        let names = raw.get(shstrndx)?.1.clone();
        let strtab = read_at(f, names.offset, names.size)?;
        elf.sections = raw
            .into_iter()
            .map(|(name_at, mut s)| {
                s.name = c_string(strtab.get(name_at as usize..).unwrap_or_default());
                s
            })
            .collect();
        Some(elf)
    }

    /// One section header: (offset of its name in the name table, the section).
    fn section_header(&self, h: &[u8]) -> (u32, Section) {
        let name_at = self.u32(&h[0..4]);
        let nobits = self.u32(&h[4..8]) == 8; // SHT_NOBITS
        let s = if self.wide {
            Section {
                name: String::new(),
                addr: self.u64(&h[16..24]),
                offset: self.u64(&h[24..32]),
                size: self.u64(&h[32..40]),
                nobits,
            }
        } else {
            Section {
                name: String::new(),
                addr: self.u32(&h[12..16]) as u64,
                offset: self.u32(&h[16..20]) as u64,
                size: self.u32(&h[20..24]) as u64,
                nobits,
            }
        };
        (name_at, s)
    }

    fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s.name == name)
    }

    /// The contents of the section called `name`.
    fn section(&self, f: &File, name: &str) -> Option<Vec<u8>> {
        let s = self.sections.iter().find(|s| s.name == name && !s.nobits)?;
        read_at(f, s.offset, s.size)
    }

    /// Reads `len` bytes at virtual address `addr` (through the section that holds it).
    fn read_addr(&self, f: &File, addr: u64, len: u64) -> Option<Vec<u8>> {
        let s = self.sections.iter().find(|s| {
            !s.nobits
                && s.addr != 0
                && addr >= s.addr
                && addr
                    .checked_add(len)
                    .is_some_and(|end| end <= s.addr + s.size)
        })?;
        read_at(f, s.offset + (addr - s.addr), len)
    }

    fn u16(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.little {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }

    fn u64(&self, b: &[u8]) -> u64 {
        let a: [u8; 8] = b[..8].try_into().unwrap_or_default();
        if self.little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }

    /// A pointer-sized word.
    fn word(&self, b: &[u8], size: usize) -> Option<u64> {
        match size {
            4 => Some(self.u32(b.get(..4)?) as u64),
            8 => Some(self.u64(b.get(..8)?)),
            _ => None,
        }
    }
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The module info text in a `.go.buildinfo` section, in either layout: Go 1.18+ stores the
/// strings inline after the 32-byte header (flag bit 2); older ones store two pointers to Go
/// string headers.
fn modinfo(f: &File, elf: &Elf, info: &[u8]) -> Option<String> {
    if info.len() < 32 || &info[..14] != MAGIC {
        return None;
    }
    let ptr_size = info[14] as usize;
    let flags = info[15];
    let raw = if flags & 2 != 0 {
        let (_version, rest) = varint_string(&info[32..])?;
        varint_string(rest)?.0.to_vec()
    } else {
        let at = 16 + ptr_size;
        let header = elf.word(info.get(at..)?, ptr_size)?;
        let h = elf.read_addr(f, header, 2 * ptr_size as u64)?;
        let data = elf.word(&h, ptr_size)?;
        let len = elf.word(&h[ptr_size..], ptr_size)?;
        elf.read_addr(f, data, len)?
    };
    Some(String::from_utf8_lossy(strip_sentinels(&raw)).into_owned())
}

/// A Go uvarint-length-prefixed string and what follows it.
fn varint_string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut len: u64 = 0;
    for (i, byte) in b.iter().enumerate().take(10) {
        len |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            let start = i + 1;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            return Some((b.get(start..end)?, &b[end..]));
        }
    }
    None
}

/// Go wraps the module info in 16-byte sentinels (as `debug/buildinfo` strips them).
fn strip_sentinels(m: &[u8]) -> &[u8] {
    if m.len() >= 33 && m[m.len() - 17] == b'\n' {
        &m[16..m.len() - 16]
    } else {
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SENTINEL: &[u8; 16] = b"0w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xf2";

    fn wrapped(text: &str) -> Vec<u8> {
        let mut m = SENTINEL.to_vec();
        m.extend_from_slice(text.as_bytes());
        m.extend_from_slice(SENTINEL);
        m
    }

    fn uvarint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    /// A little-endian ELF64 with sections: null, .shstrtab, .go.buildinfo, .rodata (at
    /// virtual address 0x1000), plus `extra` section names without content.
    fn elf(buildinfo: Option<&[u8]>, rodata: &[u8], extra: &[&str]) -> tempfile::NamedTempFile {
        let mut names = b"\0.shstrtab\0.go.buildinfo\0.rodata\0".to_vec();
        let extra_at: Vec<u32> = extra
            .iter()
            .map(|n| {
                let at = names.len() as u32;
                names.extend_from_slice(n.as_bytes());
                names.push(0);
                at
            })
            .collect();
        let bi = buildinfo.unwrap_or_default();
        let mut body = vec![0u8; 64];
        let names_off = body.len() as u64;
        body.extend_from_slice(&names);
        let bi_off = body.len() as u64;
        body.extend_from_slice(bi);
        let ro_off = body.len() as u64;
        body.extend_from_slice(rodata);
        let shoff = body.len() as u64;
        let mut sh = |name: u32, typ: u32, addr: u64, off: u64, size: u64| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&typ.to_le_bytes());
            h[16..24].copy_from_slice(&addr.to_le_bytes());
            h[24..32].copy_from_slice(&off.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            body.extend_from_slice(&h);
        };
        sh(0, 0, 0, 0, 0);
        sh(1, 3, 0, names_off, names.len() as u64);
        let bi_name = if buildinfo.is_some() { 11 } else { 0 };
        sh(bi_name, 1, 0x500, bi_off, bi.len() as u64);
        sh(25, 1, 0x1000, ro_off, rodata.len() as u64);
        for at in &extra_at {
            sh(*at, 1, 0, 0, 0);
        }
        let count = 4 + extra.len() as u16;
        body[..4].copy_from_slice(b"\x7fELF");
        body[4] = 2;
        body[5] = 1;
        body[6] = 1;
        body[40..48].copy_from_slice(&shoff.to_le_bytes());
        body[58..60].copy_from_slice(&64u16.to_le_bytes());
        body[60..62].copy_from_slice(&count.to_le_bytes());
        body[62..64].copy_from_slice(&1u16.to_le_bytes());
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&body).unwrap();
        f
    }

    fn inline_buildinfo(modinfo: &str) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(8);
        b.push(2);
        b.resize(32, 0);
        uvarint(8, &mut b);
        b.extend_from_slice(b"go1.22.1");
        let m = wrapped(modinfo);
        uvarint(m.len(), &mut b);
        b.extend_from_slice(&m);
        b
    }

    fn kind(f: &tempfile::NamedTempFile) -> ExeKind {
        classify(f.as_file())
    }

    #[test]
    fn inline_build_info_of_go_1_18_and_later_is_read() {
        let f = elf(
            Some(&inline_buildinfo(
                "path\tgithub.com/distribution/distribution/v3/cmd/registry\nmod\tgithub.com/distribution/distribution/v3\tv3.0.0\t\nbuild\t-compiler=gc\n",
            )),
            b"",
            &[],
        );
        assert_eq!(
            kind(&f),
            ExeKind::Distribution("github.com/distribution/distribution/v3/cmd/registry".into())
        );
    }

    #[test]
    fn pointer_build_info_of_go_1_13_to_1_17_is_read() {
        // .rodata at 0x1000: the Go string header (data, len) at 0x1000, the text at 0x1010.
        let m = wrapped("path\tgithub.com/docker/distribution/cmd/registry\n");
        let mut ro = Vec::new();
        ro.extend_from_slice(&0x1010u64.to_le_bytes());
        ro.extend_from_slice(&(m.len() as u64).to_le_bytes());
        ro.extend_from_slice(&m);
        let mut bi = MAGIC.to_vec();
        bi.push(8);
        bi.push(0);
        bi.extend_from_slice(&0x2000u64.to_le_bytes()); // version: not read
        bi.extend_from_slice(&0x1000u64.to_le_bytes()); // modinfo
        let f = elf(Some(&bi), &ro, &[]);
        assert_eq!(
            kind(&f),
            ExeKind::Distribution("github.com/docker/distribution/cmd/registry".into())
        );
    }

    #[test]
    fn a_program_that_only_depends_on_distribution_is_not_the_registry() {
        let f = elf(
            Some(&inline_buildinfo(
                "path\tgithub.com/containers/skopeo/cmd/skopeo\nmod\tgithub.com/containers/skopeo\t(devel)\t\ndep\tgithub.com/docker/distribution\tv2.8.2+incompatible\th1:x\n",
            )),
            b"",
            &[],
        );
        assert_eq!(kind(&f), ExeKind::Other);
        assert_eq!(
            classify_modinfo("path\tgithub.com/docker/distribution-fork/cmd/registry\n"),
            ExeKind::Other
        );
    }

    #[test]
    fn non_go_old_go_and_non_elf_files() {
        assert_eq!(kind(&elf(None, b"", &[])), ExeKind::Other, "plain ELF");
        assert_eq!(
            kind(&elf(None, b"", &[".gopclntab"])),
            ExeKind::Unknown,
            "Go without build info"
        );
        assert_eq!(
            kind(&elf(Some(&inline_buildinfo("")), b"", &[])),
            ExeKind::Unknown,
            "build info without a path"
        );
        let mut script = tempfile::NamedTempFile::new().unwrap();
        script
            .write_all(b"#!/bin/sh\nexec registry serve\n")
            .unwrap();
        assert_eq!(kind(&script), ExeKind::Unknown);
    }

    #[test]
    fn debians_docker_registry_is_recognised() {
        let Ok(f) = File::open("/usr/bin/docker-registry") else {
            assert_eq!(
                std::env::var("REGCLEAN_ALLOW_SKIP_E2E").as_deref(),
                Ok("1"),
                "/usr/bin/docker-registry (Debian's docker-registry) is required"
            );
            return;
        };
        assert_eq!(
            classify(&f),
            ExeKind::Distribution("github.com/docker/distribution/cmd/registry".into())
        );
    }
}
