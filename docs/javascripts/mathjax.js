// MathJax 3 configuration for pymdownx.arithmatex (generic mode) and for the Markdown cells of
// the rendered notebooks. MathJax itself is served by the site (javascripts/mathjax/, copied from
// the django-static-mathjax package by docs/hooks/mathjax.py): pages render math offline.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    // Typeset only arithmatex output, notebook Markdown cells and the table of contents (headings
    // with math appear there as plain \(...\) text), never code or prose dollars. MathJax skips
    // an ignored element's descendants unless they match processHtmlClass, and typesets every
    // descendant of a processed element that is not itself ignored: ignoring the page's two
    // top-level containers (and not ".*|", which also matches elements without a class) keeps
    // the paragraphs and lists inside a notebook Markdown cell typeset.
    ignoreHtmlClass: "md-header|md-container",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown|jp-MarkdownOutput|md-ellipsis",
  },
};

// mkdocs-material's instant navigation swaps pages without reloading: typeset each new page.
document$.subscribe(() => {
  const output = MathJax.startup.output;
  if (output.clearCache) output.clearCache();  // CHTML has a font cache; the SVG output used here has none
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
