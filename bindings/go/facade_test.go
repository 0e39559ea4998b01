package piecestore_test

import (
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// goColumn reads the Go column of bindings/FACADE.tsv: core name -> the Go names.
func goColumn(t *testing.T) map[string][]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "FACADE.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	var header []string
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			continue
		}
		cells := strings.Split(l, "\t")
		if header == nil {
			header = cells
			if strings.Join(header, ",") != "core,python,node,go,uniffi,note" {
				t.Fatalf("header %q", l)
			}
			continue
		}
		if len(cells) != len(header) {
			t.Fatalf("row %q has %d cells", l, len(cells))
		}
		rows[cells[0]] = strings.Split(cells[3], ",")
	}
	return rows
}

// exported lists the package's exported functions that return a *Store and the exported
// methods of *Store, from its source.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	fset := gotoken.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range file.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || !fn.Name.IsExported() {
				continue
			}
			if fn.Recv != nil {
				if star, ok := fn.Recv.List[0].Type.(*ast.StarExpr); ok {
					if id, ok := star.X.(*ast.Ident); ok && id.Name == "Store" {
						out[fn.Name.Name] = true
					}
				}
				continue
			}
			if fn.Type.Results != nil {
				for _, r := range fn.Type.Results.List {
					if star, ok := r.Type.(*ast.StarExpr); ok {
						if id, ok := star.X.(*ast.Ident); ok && id.Name == "Store" {
							out[fn.Name.Name] = true
						}
					}
				}
			}
		}
	}
	return out
}

func TestFacadeTableMatchesTheGoBinding(t *testing.T) {
	have := exported(t)
	if !have["Get"] || !have["Open"] {
		t.Fatalf("the parser found %v", have)
	}
	named := map[string]bool{}
	for core, names := range goColumn(t) {
		for _, n := range names {
			if n == "-" || n == "MISSING" {
				continue
			}
			if !have[n] {
				t.Errorf("bindings/FACADE.tsv names Go's %s (for %s), which the package lacks", n, core)
			}
			named[n] = true
		}
	}
	for n := range have {
		if !named[n] {
			t.Errorf("Store.%s is missing from bindings/FACADE.tsv", n)
		}
	}
}
