// MathJax 3 configuration for pymdownx.arithmatex (generic mode) and for the Markdown cells of
// the rendered notebooks. The MathJax script itself is loaded by the browser from a CDN
// (mkdocs.yml: extra_javascript); nothing is fetched at build time.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    // Typeset only arithmatex output and notebook Markdown cells, never code or prose dollars.
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown|jp-MarkdownOutput",
  },
};

// mkdocs-material's instant navigation swaps pages without reloading: typeset each new page.
document$.subscribe(() => {
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
