// MathJax configuration for pymdownx.arithmatex (generic mode): typeset only the elements
// arithmatex marks. MathJax itself is vendored (javascripts/mathjax/, see VENDORED.txt).
//
// The first typeset is left to the document$ subscription below (startup.typeset: false),
// after MathJax's startup promise: clearing the output cache after MathJax had already
// typeset the page removed every glyph's CSS, leaving the equations laid out but invisible.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
  startup: {
    typeset: false,
  },
};

document$.subscribe(() => {
  MathJax.startup.promise.then(() => {
    MathJax.startup.output.clearCache();
    MathJax.typesetClear();
    MathJax.texReset();
    return MathJax.typesetPromise();
  });
});
