/*
 * NF images: verifier, memfd builder and mapper (see nf_image.h for the theory of operation).
 *
 * The input ELF is untrusted: it comes from user source through the compiler, and a hostile
 * user can hand-craft it. Only program headers and PT_DYNAMIC are used (section headers are
 * not needed to load a shared object and can be stripped or forged), and every read goes
 * through elf_read()/va_read(), which copy into aligned locals after a bounds check.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "nf_image.h"

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U /* Linux 6.3; missing from Debian 12 headers */
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef DT_RELR
#define DT_RELR 36
#endif

#define PAGE 4096ULL
#define PAGE_DOWN(x) ((x) & ~(PAGE - 1))
#define PAGE_UP(x) (((x) + PAGE - 1) & ~(PAGE - 1))
#define MAX_PHDRS 32
#define NAME_MAX_SHOWN 64
#define MAX_UNDEF_SHOWN 3

/* What the verifier learned about one ELF; prepare() reuses it. */
struct elf_view {
	const uint8_t *p;
	size_t len;
	Elf64_Phdr ph[MAX_PHDRS];
	unsigned int phnum;
	int rw;    /* index of the one writable PT_LOAD */
	int relro; /* index of PT_GNU_RELRO, or -1 */
	int dyn;   /* index of PT_DYNAMIC */
	uint64_t symtab, strtab, strsz, gnu_hash, hash;
	uint64_t rela, relasz, jmprel, pltrelsz;
	uint32_t nsyms;
	uint64_t entry_off;
	uint64_t text_len, relro_len, data_len;
	char *err;
	size_t errlen;
};

static int refuse(struct elf_view *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int refuse(struct elf_view *v, const char *fmt, ...)
{
	va_list ap;

	if (v->err && v->errlen) {
		va_start(ap, fmt);
		vsnprintf(v->err, v->errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* Copy n bytes at file offset off, or fail if any of them lies outside the file. */
static int elf_read(const struct elf_view *v, uint64_t off, void *dst, size_t n)
{
	if (off > v->len || n > v->len - off)
		return -1;
	memcpy(dst, v->p + off, n);
	return 0;
}

/* File offset of [va, va+n), which must lie within the file part of one PT_LOAD. */
static int va_to_off(const struct elf_view *v, uint64_t va, uint64_t n, uint64_t *off)
{
	for (unsigned int i = 0; i < v->phnum; i++) {
		const Elf64_Phdr *ph = &v->ph[i];

		if (ph->p_type != PT_LOAD || va < ph->p_vaddr)
			continue;
		if (va - ph->p_vaddr > ph->p_filesz || n > ph->p_filesz - (va - ph->p_vaddr))
			continue;
		*off = ph->p_offset + (va - ph->p_vaddr);
		if (*off < ph->p_offset || *off > v->len || n > v->len - *off)
			return -1;
		return 0;
	}
	return -1;
}

static int va_read(const struct elf_view *v, uint64_t va, void *dst, size_t n)
{
	uint64_t off;

	if (va_to_off(v, va, n, &off) < 0)
		return -1;
	return elf_read(v, off, dst, n);
}

/*
 * Copy the dynamic string at strtab+idx into buf for an error message: bounded by DT_STRSZ
 * and the file, non-printable bytes replaced, long names cut with "...".
 */
static const char *dyn_str(const struct elf_view *v, uint64_t idx, char *buf, size_t buflen)
{
	uint64_t off;
	size_t n = 0;

	if (idx >= v->strsz || va_to_off(v, v->strtab + idx, 1, &off) < 0)
		return "<bad name>";
	while (n + 1 < buflen && idx + n < v->strsz && off + n < v->len) {
		uint8_t c = v->p[off + n];

		if (c == 0)
			break;
		buf[n++] = (c >= 0x20 && c < 0x7f && c != '\'') ? (char)c : '?';
	}
	if (n + 1 == buflen && buflen > 4)
		memcpy(buf + buflen - 4, "...", 3);
	buf[n] = 0;
	return buf;
}

/* Exact name comparison, bounded like dyn_str(). */
static int dyn_str_eq(const struct elf_view *v, uint64_t idx, const char *s)
{
	size_t n = strlen(s) + 1;
	uint64_t off;

	if (idx >= v->strsz || n > v->strsz - idx || va_to_off(v, v->strtab + idx, n, &off) < 0)
		return 0;
	return memcmp(v->p + off, s, n) == 0;
}

static int check_ehdr(struct elf_view *v)
{
	Elf64_Ehdr eh;

	if (elf_read(v, 0, &eh, sizeof(eh)) < 0 || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
		return refuse(v, "not an ELF file");
	if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
	    eh.e_machine != EM_X86_64)
		return refuse(v, "not an x86-64 ELF64 little-endian object");
	if (eh.e_type != ET_DYN)
		return refuse(v, "ELF type %u is not ET_DYN (a shared object)", eh.e_type);
	if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > MAX_PHDRS)
		return refuse(v, "bad program header table (%u entries of %u bytes)", eh.e_phnum,
			      eh.e_phentsize);
	v->phnum = eh.e_phnum;
	if (elf_read(v, eh.e_phoff, v->ph, v->phnum * sizeof(Elf64_Phdr)) < 0)
		return refuse(v, "program header table at 0x%llx runs past the end of the file",
			      (unsigned long long)eh.e_phoff);
	return 0;
}

static int check_load(struct elf_view *v, unsigned int i)
{
	const Elf64_Phdr *ph = &v->ph[i];

	if (ph->p_filesz > ph->p_memsz || ph->p_offset > v->len ||
	    ph->p_filesz > v->len - ph->p_offset)
		return refuse(v, "PT_LOAD at 0x%llx: file range outside the file",
			      (unsigned long long)ph->p_vaddr);
	if (ph->p_vaddr >= SERPENS_NF_AREA_SIZE || ph->p_memsz > SERPENS_NF_AREA_SIZE - ph->p_vaddr)
		return refuse(v, "PT_LOAD at 0x%llx (0x%llx bytes) does not fit an area (%llu MiB)",
			      (unsigned long long)ph->p_vaddr, (unsigned long long)ph->p_memsz,
			      SERPENS_NF_AREA_SIZE >> 20);
	if ((ph->p_flags & PF_W) && (ph->p_flags & PF_X))
		return refuse(v, "writable and executable segment at 0x%llx is not allowed",
			      (unsigned long long)ph->p_vaddr);
	if (ph->p_flags & PF_W) {
		if (v->rw >= 0)
			return refuse(v, "more than one writable PT_LOAD (0x%llx and 0x%llx)",
				      (unsigned long long)v->ph[v->rw].p_vaddr,
				      (unsigned long long)ph->p_vaddr);
		v->rw = (int)i;
	}
	return 0;
}

static int check_phdrs(struct elf_view *v)
{
	int rc;

	v->rw = v->relro = v->dyn = -1;
	for (unsigned int i = 0; i < v->phnum; i++) {
		switch (v->ph[i].p_type) {
		case PT_LOAD:
			if ((rc = check_load(v, i)) < 0)
				return rc;
			break;
		case PT_INTERP:
			return refuse(v, "program interpreter (PT_INTERP) is not allowed");
		case PT_TLS:
			return refuse(v, "thread-local storage (PT_TLS) is not allowed");
		case PT_DYNAMIC:
			v->dyn = (int)i;
			break;
		case PT_GNU_RELRO:
			v->relro = (int)i;
			break;
		case PT_GNU_STACK:
			if (v->ph[i].p_flags & PF_X)
				return refuse(v, "executable stack (PT_GNU_STACK) is not allowed");
			break;
		}
	}
	if (v->dyn < 0)
		return refuse(v, "no PT_DYNAMIC segment");
	if (v->rw < 0)
		return refuse(v, "no writable PT_LOAD (expected exactly one)");
	return 0;
}

/* Tags that would need a dynamic linker, or code run at load time: none runs here. */
static int check_dyn_tag(struct elf_view *v, const Elf64_Dyn *d)
{
	switch (d->d_tag) {
	case DT_INIT:
		return refuse(v, "initialiser (DT_INIT) is not allowed");
	case DT_FINI:
		return refuse(v, "finaliser (DT_FINI) is not allowed");
	case DT_INIT_ARRAY:
	case DT_INIT_ARRAYSZ:
		return refuse(v, "constructor (DT_INIT_ARRAY) is not allowed");
	case DT_FINI_ARRAY:
	case DT_FINI_ARRAYSZ:
		return refuse(v, "destructor (DT_FINI_ARRAY) is not allowed");
	case DT_PREINIT_ARRAY:
	case DT_PREINIT_ARRAYSZ:
		return refuse(v, "constructor (DT_PREINIT_ARRAY) is not allowed");
	case DT_TEXTREL:
		return refuse(v, "text relocations (DT_TEXTREL) are not allowed");
	case DT_FLAGS:
		if (d->d_un.d_val & DF_TEXTREL)
			return refuse(v, "text relocations (DF_TEXTREL) are not allowed");
		if (d->d_un.d_val & DF_STATIC_TLS)
			return refuse(v, "thread-local storage (DF_STATIC_TLS) is not allowed");
		return 0;
	case DT_REL:
	case DT_RELR:
		return refuse(v, "relocation table %s is not supported (only DT_RELA)",
			      d->d_tag == DT_REL ? "DT_REL" : "DT_RELR");
	case DT_PLTREL:
		if (d->d_un.d_val != DT_RELA)
			return refuse(v, "DT_PLTREL %llu is not DT_RELA",
				      (unsigned long long)d->d_un.d_val);
		return 0;
	case DT_RELAENT:
		if (d->d_un.d_val != sizeof(Elf64_Rela))
			return refuse(v, "DT_RELAENT %llu is not %zu",
				      (unsigned long long)d->d_un.d_val, sizeof(Elf64_Rela));
		return 0;
	case DT_SYMENT:
		if (d->d_un.d_val != sizeof(Elf64_Sym))
			return refuse(v, "DT_SYMENT %llu is not %zu",
				      (unsigned long long)d->d_un.d_val, sizeof(Elf64_Sym));
		return 0;
	}
	return 0;
}

static void note_dyn_addr(struct elf_view *v, const Elf64_Dyn *d)
{
	uint64_t x = d->d_un.d_val;

	switch (d->d_tag) {
	case DT_SYMTAB: v->symtab = x; break;
	case DT_STRTAB: v->strtab = x; break;
	case DT_STRSZ: v->strsz = x; break;
	case DT_GNU_HASH: v->gnu_hash = x; break;
	case DT_HASH: v->hash = x; break;
	case DT_RELA: v->rela = x; break;
	case DT_RELASZ: v->relasz = x; break;
	case DT_JMPREL: v->jmprel = x; break;
	case DT_PLTRELSZ: v->pltrelsz = x; break;
	}
}

static int check_dynamic(struct elf_view *v)
{
	const Elf64_Phdr *ph = &v->ph[v->dyn];
	uint64_t needed = 0, n = ph->p_filesz / sizeof(Elf64_Dyn);
	int has_needed = 0, rc;
	char name[NAME_MAX_SHOWN];

	for (uint64_t i = 0; i < n; i++) {
		Elf64_Dyn d;

		if (elf_read(v, ph->p_offset + i * sizeof(d), &d, sizeof(d)) < 0)
			return refuse(v, "PT_DYNAMIC runs past the end of the file");
		if (d.d_tag == DT_NULL)
			break;
		if (d.d_tag == DT_NEEDED && !has_needed) {
			has_needed = 1; /* named below, once DT_STRTAB is known */
			needed = d.d_un.d_val;
		}
		if ((rc = check_dyn_tag(v, &d)) < 0)
			return rc;
		note_dyn_addr(v, &d);
	}
	if (!v->symtab || !v->strtab || !v->strsz)
		return refuse(v, "missing DT_SYMTAB/DT_STRTAB/DT_STRSZ");
	if (has_needed)
		return refuse(v, "DT_NEEDED '%s' (NFs may not link libraries)",
			      dyn_str(v, needed, name, sizeof(name)));
	if (!v->gnu_hash && !v->hash)
		return refuse(v, "no DT_GNU_HASH or DT_HASH: cannot count the symbols");
	return 0;
}

/*
 * Number of .dynsym entries. DT_HASH says it (nchain); DT_GNU_HASH only lists the hashed
 * symbols: the count is the end of the chain starting at the highest bucket.
 */
static int count_gnu_hash(struct elf_view *v)
{
	uint32_t hdr[4], nbuckets, symoffset, maxsym = 0, word;
	uint64_t buckets, chain;

	if (va_read(v, v->gnu_hash, hdr, sizeof(hdr)) < 0)
		return refuse(v, "DT_GNU_HASH table at 0x%llx is outside the file",
			      (unsigned long long)v->gnu_hash);
	nbuckets = hdr[0];
	symoffset = hdr[1];
	buckets = v->gnu_hash + 16 + (uint64_t)hdr[2] * 8;
	for (uint32_t b = 0; b < nbuckets; b++) {
		if (va_read(v, buckets + (uint64_t)b * 4, &word, 4) < 0)
			return refuse(v, "DT_GNU_HASH buckets run past the end of the file");
		if (word > maxsym)
			maxsym = word;
	}
	if (maxsym < symoffset) {
		v->nsyms = symoffset;
		return 0;
	}
	chain = buckets + (uint64_t)nbuckets * 4;
	/* The last chain ends with bit 0 set; each step reads 4 more bytes, so this terminates. */
	for (;;) {
		if (va_read(v, chain + (uint64_t)(maxsym - symoffset) * 4, &word, 4) < 0)
			return refuse(v, "DT_GNU_HASH chain runs past the end of the file");
		if (word & 1)
			break;
		if (++maxsym == UINT32_MAX)
			return refuse(v, "DT_GNU_HASH chain does not end");
	}
	v->nsyms = maxsym + 1;
	return 0;
}

static int count_symbols(struct elf_view *v)
{
	uint32_t hdr[2];
	uint64_t off;
	int rc;

	if (v->gnu_hash) {
		if ((rc = count_gnu_hash(v)) < 0)
			return rc;
	} else {
		if (va_read(v, v->hash, hdr, sizeof(hdr)) < 0)
			return refuse(v, "DT_HASH table at 0x%llx is outside the file",
				      (unsigned long long)v->hash);
		v->nsyms = hdr[1];
	}
	if (va_to_off(v, v->symtab, (uint64_t)v->nsyms * sizeof(Elf64_Sym), &off) < 0)
		return refuse(v, "DT_SYMTAB (%u symbols) runs past the end of the file", v->nsyms);
	return 0;
}

/* Is `va` inside an executable PT_LOAD? nf_entry must point at code. */
static int in_exec_load(const struct elf_view *v, uint64_t va)
{
	for (unsigned int i = 0; i < v->phnum; i++) {
		const Elf64_Phdr *ph = &v->ph[i];

		if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) && va >= ph->p_vaddr &&
		    va - ph->p_vaddr < ph->p_filesz)
			return 1;
	}
	return 0;
}

/* Collects up to MAX_UNDEF_SHOWN undefined names for one message naming them all. */
struct undef_list {
	unsigned int n;
	char names[MAX_UNDEF_SHOWN][NAME_MAX_SHOWN];
};

static int check_export(struct elf_view *v, const Elf64_Sym *s, int *have_entry)
{
	char name[NAME_MAX_SHOWN];

	if (!dyn_str_eq(v, s->st_name, "nf_entry"))
		return refuse(v, "exports '%s' besides nf_entry (make it static)",
			      dyn_str(v, s->st_name, name, sizeof(name)));
	if (ELF64_ST_TYPE(s->st_info) != STT_FUNC || !in_exec_load(v, s->st_value))
		return refuse(v, "nf_entry is not a function in an executable segment");
	*have_entry = 1;
	v->entry_off = s->st_value;
	return 0;
}

static int check_symbol(struct elf_view *v, const Elf64_Sym *s, struct undef_list *u,
			int *have_entry)
{
	unsigned int bind = ELF64_ST_BIND(s->st_info), vis = ELF64_ST_VISIBILITY(s->st_other);
	char name[NAME_MAX_SHOWN];

	if (ELF64_ST_TYPE(s->st_info) == STT_TLS)
		return refuse(v, "thread-local (TLS) symbol '%s' is not allowed",
			      dyn_str(v, s->st_name, name, sizeof(name)));
	if (s->st_shndx == SHN_UNDEF) {
		if (s->st_name == 0)
			return 0;
		if (u->n < MAX_UNDEF_SHOWN)
			dyn_str(v, s->st_name, u->names[u->n], NAME_MAX_SHOWN);
		u->n++;
		return 0;
	}
	if (bind == STB_LOCAL || ELF64_ST_TYPE(s->st_info) == STT_SECTION)
		return 0;
	if (vis == STV_HIDDEN || vis == STV_INTERNAL)
		return 0;
	return check_export(v, s, have_entry);
}

static int report_undefined(struct elf_view *v, const struct undef_list *u)
{
	char list[MAX_UNDEF_SHOWN * (NAME_MAX_SHOWN + 4) + 32];
	size_t o = 0;

	for (unsigned int i = 0; i < u->n && i < MAX_UNDEF_SHOWN; i++)
		o += snprintf(list + o, sizeof(list) - o, "%s'%s'", i ? ", " : "", u->names[i]);
	if (u->n > MAX_UNDEF_SHOWN)
		snprintf(list + o, sizeof(list) - o, " and %u more", u->n - MAX_UNDEF_SHOWN);
	return refuse(v, "undefined symbol%s %s (NFs have no libc; use ctx->api)",
		      u->n > 1 ? "s" : "", list);
}

static int check_symbols(struct elf_view *v)
{
	struct undef_list u = {0};
	int have_entry = 0, rc;

	if ((rc = count_symbols(v)) < 0)
		return rc;
	for (uint32_t i = 1; i < v->nsyms; i++) {
		Elf64_Sym s;

		if (va_read(v, v->symtab + (uint64_t)i * sizeof(s), &s, sizeof(s)) < 0)
			return refuse(v, "symbol %u is outside the file", i);
		if ((rc = check_symbol(v, &s, &u, &have_entry)) < 0)
			return rc;
	}
	if (u.n)
		return report_undefined(v, &u);
	if (!have_entry)
		return refuse(v, "nf_entry is not exported (declare the NF with SERPENS_NF)");
	return 0;
}

static const char *reloc_type_name(uint32_t t)
{
	switch (t) {
	case R_X86_64_NONE: return "R_X86_64_NONE";
	case R_X86_64_64: return "R_X86_64_64";
	case R_X86_64_PC32: return "R_X86_64_PC32";
	case R_X86_64_COPY: return "R_X86_64_COPY";
	case R_X86_64_GLOB_DAT: return "R_X86_64_GLOB_DAT";
	case R_X86_64_JUMP_SLOT: return "R_X86_64_JUMP_SLOT";
	case R_X86_64_DTPMOD64: return "R_X86_64_DTPMOD64";
	case R_X86_64_DTPOFF64: return "R_X86_64_DTPOFF64";
	case R_X86_64_TPOFF64: return "R_X86_64_TPOFF64";
	case R_X86_64_32: return "R_X86_64_32";
	case R_X86_64_IRELATIVE: return "R_X86_64_IRELATIVE";
	}
	return NULL;
}

static int refuse_reloc(struct elf_view *v, const Elf64_Rela *r)
{
	uint32_t t = ELF64_R_TYPE(r->r_info), si = ELF64_R_SYM(r->r_info);
	const char *tn = reloc_type_name(t);
	char tbuf[24], name[NAME_MAX_SHOWN], against[NAME_MAX_SHOWN + 16] = "";
	Elf64_Sym s;

	if (!tn) {
		snprintf(tbuf, sizeof(tbuf), "type %u", t);
		tn = tbuf;
	}
	if (si && si < v->nsyms && va_read(v, v->symtab + (uint64_t)si * sizeof(s), &s, sizeof(s)) == 0)
		snprintf(against, sizeof(against), " against '%s'",
			 dyn_str(v, s.st_name, name, sizeof(name)));
	return refuse(v, "relocation %s%s at 0x%llx (only R_X86_64_RELATIVE is allowed)", tn,
		      against, (unsigned long long)r->r_offset);
}

/*
 * Walk one RELA table: every entry must be R_X86_64_RELATIVE and patch 8 bytes inside the
 * writable segment (anything in text would be a text relocation). With `img` set, apply it:
 * img holds the image bytes from vaddr `img_va` on, `img_len` of them.
 */
static int walk_rela(struct elf_view *v, uint64_t table, uint64_t size, uint64_t base,
		     uint8_t *img, uint64_t img_va, uint64_t img_len)
{
	const Elf64_Phdr *rw = &v->ph[v->rw];

	for (uint64_t i = 0; i < size / sizeof(Elf64_Rela); i++) {
		Elf64_Rela r;
		uint64_t val;

		if (va_read(v, table + i * sizeof(r), &r, sizeof(r)) < 0)
			return refuse(v, "relocation table at 0x%llx runs past the end of the file",
				      (unsigned long long)table);
		if (ELF64_R_TYPE(r.r_info) != R_X86_64_RELATIVE)
			return refuse_reloc(v, &r);
		if (r.r_offset < rw->p_vaddr || r.r_offset - rw->p_vaddr > rw->p_memsz ||
		    rw->p_memsz - (r.r_offset - rw->p_vaddr) < 8)
			return refuse(v, "relocation at 0x%llx outside the writable segment",
				      (unsigned long long)r.r_offset);
		if (!img)
			continue;
		if (img_len < 8 || r.r_offset < img_va || r.r_offset - img_va > img_len - 8)
			return -EFAULT; /* cannot happen: img covers every checked offset */
		val = base + (uint64_t)r.r_addend;
		memcpy(img + (r.r_offset - img_va), &val, 8);
	}
	return 0;
}

static int walk_relocs(struct elf_view *v, uint64_t base, uint8_t *img, uint64_t img_va,
		       uint64_t img_len)
{
	int rc = 0;

	if (v->relasz)
		rc = walk_rela(v, v->rela, v->relasz, base, img, img_va, img_len);
	if (rc == 0 && v->pltrelsz)
		rc = walk_rela(v, v->jmprel, v->pltrelsz, base, img, img_va, img_len);
	return rc;
}

/*
 * text = [0, first writable page), relro = whole pages of PT_GNU_RELRO from there (its end
 * rounded down: the page holding its tail also holds .data, as glibc does), data = the rest
 * up to the end of the writable segment.
 */
static int compute_layout(struct elf_view *v)
{
	const Elf64_Phdr *rw = &v->ph[v->rw];

	v->text_len = PAGE_DOWN(rw->p_vaddr);
	for (unsigned int i = 0; i < v->phnum; i++) {
		const Elf64_Phdr *ph = &v->ph[i];

		if (ph->p_type == PT_LOAD && (int)i != v->rw && ph->p_vaddr + ph->p_memsz > v->text_len)
			return refuse(v, "read-only PT_LOAD at 0x%llx overlaps the first writable page 0x%llx",
				      (unsigned long long)ph->p_vaddr,
				      (unsigned long long)v->text_len);
	}
	if (v->text_len == 0)
		return refuse(v, "writable segment at 0x%llx leaves no room for text",
			      (unsigned long long)rw->p_vaddr);
	v->relro_len = 0;
	if (v->relro >= 0) {
		const Elf64_Phdr *r = &v->ph[v->relro];
		uint64_t rw_end = rw->p_vaddr + rw->p_memsz;

		/* A RELRO range elsewhere only loses protection, never correctness. */
		if (r->p_vaddr >= rw->p_vaddr && r->p_vaddr <= rw_end &&
		    r->p_memsz <= rw_end - r->p_vaddr && PAGE_DOWN(r->p_vaddr) == v->text_len &&
		    PAGE_DOWN(r->p_vaddr + r->p_memsz) > v->text_len)
			v->relro_len = PAGE_DOWN(r->p_vaddr + r->p_memsz) - v->text_len;
	}
	v->data_len = PAGE_UP(rw->p_vaddr + rw->p_memsz) - v->text_len - v->relro_len;
	if (v->text_len + v->relro_len + v->data_len > SERPENS_NF_AREA_SIZE)
		return refuse(v, "image needs %llu bytes, more than an area (%llu)",
			      (unsigned long long)(v->text_len + v->relro_len + v->data_len),
			      SERPENS_NF_AREA_SIZE);
	if (v->entry_off >= v->text_len)
		return refuse(v, "nf_entry at 0x%llx is not in text", (unsigned long long)v->entry_off);
	return 0;
}

static int verify(struct elf_view *v, const uint8_t *elf, size_t len, char *err, size_t errlen)
{
	int rc;

	memset(v, 0, sizeof(*v));
	v->p = elf;
	v->len = elf ? len : 0;
	v->err = err;
	v->errlen = errlen;
	if (err && errlen)
		err[0] = 0;
	if ((rc = check_ehdr(v)) < 0 || (rc = check_phdrs(v)) < 0 || (rc = check_dynamic(v)) < 0 ||
	    (rc = check_symbols(v)) < 0 || (rc = walk_relocs(v, 0, NULL, 0, 0)) < 0)
		return rc;
	return compute_layout(v);
}

int serpens_image_verify(const uint8_t *elf, size_t len, char *err, size_t errlen)
{
	struct elf_view v;

	return verify(&v, elf, len, err, errlen);
}

static int pwrite_all(int fd, const uint8_t *buf, uint64_t n, uint64_t off)
{
	while (n) {
		ssize_t w = pwrite(fd, buf, n, (off_t)off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		buf += w;
		n -= (uint64_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

/* Highest vaddr+8 any relocation patches, so the relocated buffer covers them all. */
static uint64_t reloc_extent(const struct elf_view *v, uint64_t table, uint64_t size, uint64_t end)
{
	for (uint64_t i = 0; i < size / sizeof(Elf64_Rela); i++) {
		Elf64_Rela r;

		if (va_read(v, table + i * sizeof(r), &r, sizeof(r)) == 0 && r.r_offset + 8 > end)
			end = r.r_offset + 8;
	}
	return end;
}

/*
 * The writable segment goes through a private buffer: its file bytes, plus zeros up to the
 * last relocated word (normally none: relocations sit in .data.rel.ro/.got/.data), relocated,
 * then written once. The rest of .bss stays a hole in the memfd and costs no memory.
 */
static int write_rw(struct elf_view *v, int fd, uint64_t base)
{
	const Elf64_Phdr *rw = &v->ph[v->rw];
	uint64_t end = rw->p_vaddr + rw->p_filesz, n;
	uint8_t *buf;
	int rc;

	end = reloc_extent(v, v->rela, v->relasz, end);
	end = reloc_extent(v, v->jmprel, v->pltrelsz, end);
	n = end - rw->p_vaddr;
	if (n == 0)
		return 0;
	buf = calloc(1, n);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, v->p + rw->p_offset, rw->p_filesz);
	rc = walk_relocs(v, base, buf, rw->p_vaddr, n);
	if (rc == 0)
		rc = pwrite_all(fd, buf, n, rw->p_vaddr);
	free(buf);
	return rc;
}

static int write_image(struct elf_view *v, int fd, uint64_t base)
{
	uint64_t total = v->text_len + v->relro_len + v->data_len;
	int rc;

	if (ftruncate(fd, (off_t)total) < 0)
		return -errno;
	for (unsigned int i = 0; i < v->phnum; i++) {
		const Elf64_Phdr *ph = &v->ph[i];

		if (ph->p_type != PT_LOAD || (int)i == v->rw || ph->p_filesz == 0)
			continue;
		if ((rc = pwrite_all(fd, v->p + ph->p_offset, ph->p_filesz, ph->p_vaddr)) < 0)
			return rc;
	}
	if ((rc = write_rw(v, fd, base)) < 0)
		return rc;
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
		return -errno;
	return 0;
}

/* Text is mapped executable: kernels with vm.memfd_noexec want MFD_EXEC, older ones reject it. */
static int memfd_for_code(void)
{
	unsigned int flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
	int fd = memfd_create("serpens-nf", flags | MFD_EXEC);

	if (fd < 0 && errno == EINVAL)
		fd = memfd_create("serpens-nf", flags);
	return fd < 0 ? -errno : fd;
}

int serpens_image_prepare(const uint8_t *elf, size_t len, uint64_t base, int *memfd_out,
			  struct serpens_image_layout *layout, char *err, size_t errlen)
{
	struct elf_view v;
	int fd, rc;

	if ((rc = verify(&v, elf, len, err, errlen)) < 0)
		return rc;
	if (base & (PAGE - 1))
		return -EINVAL;
	if ((fd = memfd_for_code()) < 0)
		return fd;
	if ((rc = write_image(&v, fd, base)) < 0) {
		close(fd);
		return rc;
	}
	*memfd_out = fd;
	layout->base = base;
	layout->text_len = v.text_len;
	layout->relro_len = v.relro_len;
	layout->data_len = v.data_len;
	layout->entry_off = v.entry_off;
	return 0;
}

int serpens_region_reserve(void)
{
	void *want = (void *)(uintptr_t)SERPENS_NF_REGION_BASE;
	void *p = mmap(want, SERPENS_NF_REGION_SIZE, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);

	if (p == MAP_FAILED)
		return errno == EEXIST ? -EEXIST : -errno;
	if (p != want) {
		/* Kernels before 4.17 treat NOREPLACE as a hint and map elsewhere. */
		munmap(p, SERPENS_NF_REGION_SIZE);
		return -EEXIST;
	}
	return 0;
}

/* A layout from outside must stay inside one area of the region: MAP_FIXED replaces anything. */
static int layout_ok(const struct serpens_image_layout *l)
{
	uint64_t total = l->text_len + l->relro_len + l->data_len;

	if (l->base < SERPENS_NF_REGION_BASE ||
	    l->base - SERPENS_NF_REGION_BASE >= SERPENS_NF_REGION_SIZE ||
	    (l->base - SERPENS_NF_REGION_BASE) % SERPENS_NF_AREA_SIZE)
		return 0;
	if ((l->text_len | l->relro_len | l->data_len) & (PAGE - 1))
		return 0;
	if (l->text_len > SERPENS_NF_AREA_SIZE || l->relro_len > SERPENS_NF_AREA_SIZE ||
	    l->data_len > SERPENS_NF_AREA_SIZE || total > SERPENS_NF_AREA_SIZE || total == 0)
		return 0;
	return l->entry_off < l->text_len;
}

/*
 * Areas this process has mapped and unmapped again. Stopping an NF punches a hole in the
 * reservation (munmap) instead of mapping PROT_NONE back over it: in this nested VM an mmap that
 * replaces a mapping costs twice one into a hole (~4.5 vs ~2 us). The rest of the area stays
 * reserved, which keeps the page table alive for the next start. A punched area is mapped with
 * MAP_FIXED_NOREPLACE so that nothing that moved into the hole is ever clobbered; an area still
 * under the reservation is replaced with MAP_FIXED, as the reservation is ours.
 */
static uint64_t punched[SERPENS_NF_AREAS / 64];

#define SMALL_DATA (16u * PAGE) /* .data+.bss populated at map time up to this size */

static uint32_t area_of(uint64_t base)
{
	return (uint32_t)((base - SERPENS_NF_REGION_BASE) / SERPENS_NF_AREA_SIZE);
}

static int map_piece(int fd, uint64_t addr, uint64_t len, uint64_t off, int prot, int flags)
{
	void *want = (void *)(uintptr_t)addr;
	uint32_t area = area_of(addr);
	int fixed = punched[area / 64] >> (area % 64) & 1 ? MAP_FIXED_NOREPLACE : MAP_FIXED;

	if (len == 0)
		return 0;
	void *got = mmap(want, len, prot, flags | fixed, fd, (off_t)off);
	if (got == MAP_FAILED)
		return -errno;
	if (got != want) { /* a kernel that ignores NOREPLACE */
		munmap(got, len);
		return -EEXIST;
	}
	return 0;
}

int serpens_image_map(int memfd, const struct serpens_image_layout *l, int populate)
{
	int pop = populate ? MAP_POPULATE : 0, rc;
	/* The data pages are written by init() at once: copying them in the mmap is cheaper than
	 * a fault each (~1.4 us per start here), but only for small .data/.bss. */
	int pop_data = pop || l->data_len <= SMALL_DATA ? MAP_POPULATE : 0;
	uint64_t relro = l->base + l->text_len, data = relro + l->relro_len;

	if (!layout_ok(l))
		return -EINVAL;
	rc = map_piece(memfd, l->base, l->text_len, 0, PROT_READ | PROT_EXEC, MAP_SHARED | pop);
	if (rc == 0)
		rc = map_piece(memfd, relro, l->relro_len, l->text_len, PROT_READ, MAP_SHARED | pop);
	if (rc == 0)
		rc = map_piece(memfd, data, l->data_len, l->text_len + l->relro_len,
			       PROT_READ | PROT_WRITE, MAP_PRIVATE | pop_data);
	if (rc < 0)
		serpens_image_unmap(l);
	return rc;
}

int serpens_image_unmap(const struct serpens_image_layout *l)
{
	uint64_t total = l->text_len + l->relro_len + l->data_len;
	uint32_t area;

	if (!layout_ok(l))
		return -EINVAL;
	if (munmap((void *)(uintptr_t)l->base, total) != 0)
		return -errno;
	area = area_of(l->base);
	punched[area / 64] |= 1ull << (area % 64);
	return 0;
}
