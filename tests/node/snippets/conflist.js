// The snippets import `./conflist.js`, as an application that copied web/conflist.js next to its
// own code would; here that is the module itself.
export * from '../../../web/conflist.js';
