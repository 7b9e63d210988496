// MathJax for pymdownx.arithmatex (generic mode): $...$ / \(...\) inline, $$...$$ / \[...\] display.
// MathJax itself is javascripts/mathjax/tex-svg-full.js, copied from the docs extra (no CDN).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  svg: { fontCache: "global" },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

document$.subscribe(() => {
  // The SVG output has clearFontCache (CHTML: clearCache); calling a missing one would stop the typesetting.
  const output = MathJax.startup.output;
  if (output.clearCache) output.clearCache();
  else if (output.clearFontCache) output.clearFontCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
